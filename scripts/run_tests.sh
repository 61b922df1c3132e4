#!/usr/bin/env bash
# Usage: bash scripts/run_tests.sh [pytest args]
#
# Sets up the environment (scripts/setup_env.sh, quick when already done) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec ${PYTHON:-python3} -m pytest -q tests "$@"
