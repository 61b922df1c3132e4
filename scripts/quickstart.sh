#!/usr/bin/env bash
# Usage: bash scripts/quickstart.sh [extra fairseq-ext-labels options, e.g. --n-clusters 50 --force]
#
# Sets up the environment (scripts/setup_env.sh), then runs the whole HuBERT label pipeline on a
# generated demo corpus (4 speakers x 12 utterances with known phones) into demo/ at the repository
# root: manifest -> MFCC features (parallel shards) -> k-means -> labels -> dict.km.txt -> quality
# report (phone purity, cluster purity, PNMI), which is printed at the end, with the
# fairseq-hydra-train command that trains on these labels. A rerun skips the finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Run the source tree (also what setup_env.sh just installed) from the repository root.
exec "${PYTHON:-python3}" -m simple_kmeans.pipeline --demo demo --espnet "$@"
