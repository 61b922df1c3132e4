#!/usr/bin/env bash
# Usage: bash scripts/quickstart.sh [--max-update N]
#
# The main job on a built-in default, into demo/ at the repository root:
#   1. set up the environment (scripts/setup_env.sh);
#   2. the HuBERT label pipeline on a generated demo corpus (4 speakers x 12 utterances with known
#      phones): manifest -> MFCC features (parallel shards) -> k-means -> labels -> dict.km.txt ->
#      label-quality report (phone purity, cluster purity, PNMI) + ESPnet export;
#   3. a short disentangled-HuBERT pretraining on CPU (config dhubert_tiny: frame-level speaker adversary
#      with the confusion loss, speaker-conditioned prediction, pitch head) through fairseq-hydra-train,
#      then the per-layer probe report (speaker-ID accuracy, PNMI). A few minutes on 2 cores; a rerun
#      skips finished steps.
# Options are passed to scripts/demo_pretrain.py (e.g. --max-update 600 for a quicker run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PYTHON:-python3}
"$PY" -m simple_kmeans.pipeline --demo demo --espnet
echo "[quickstart] pre-training dhubert_tiny: a progress bar follows the updates (fairseq's own log: demo/dhubert/run/train.log)"
"$PY" scripts/demo_pretrain.py demo "$@"
