#!/usr/bin/env bash
# Usage: bash scripts/run_tests.sh [pytest args]
#
# Sets up the environment (scripts/setup_env.sh, quick when already done) and runs the test suite,
# in PYTEST_WORKERS parallel processes (pytest-xdist; default 2, one per core here; 1 = serial).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
WORKERS=${PYTEST_WORKERS:-2}
PARALLEL=()
[ "$WORKERS" -gt 1 ] && PARALLEL=(-n "$WORKERS")
exec ${PYTHON:-python3} -m pytest -q "${PARALLEL[@]}" tests "$@"
