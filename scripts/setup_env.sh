#!/usr/bin/env bash
# Usage: bash scripts/setup_env.sh
#
# Installs fairseq-ext and everything it needs into the current Python environment
# (activate your venv/conda env first if you use one). Safe to rerun; takes about a minute.
# - torch: kept if already importable (e.g. your CUDA build on a GPU node); otherwise the CPU
#   wheel torch==2.13.0 (never a plain "torch", which would pull GBs of CUDA packages).
# - fairseq: the ve-fairseq 0.12.3 wheel (fairseq 0.12.3 for Python 3.11/3.12), with --no-deps
#   because its metadata asks for torchaudio, which this package does not use.
# - fairseq-ext itself: a regular (non-editable) install, so that
#   `fairseq-hydra-train --user-dir fairseq_ext` finds it from any working directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
PIP="$PY -m pip --disable-pip-version-check -q"

if ! $PY -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  $PIP install "torch==2.13.0"
fi
TORCH_VERSION=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
if ! $PY -c "import fairseq" >/dev/null 2>&1; then
  echo "[setup] installing fairseq (ve-fairseq==0.12.3, --no-deps)"
  $PIP install --no-deps "ve-fairseq==0.12.3"
fi
echo "[setup] installing requirements (torch pinned to the installed $TORCH_VERSION)"
$PIP install -r requirements.txt "torch==$TORCH_VERSION"
echo "[setup] installing fairseq-ext"
$PIP install --no-deps --no-build-isolation --force-reinstall . >/dev/null
rm -rf build fairseq_ext.egg-info fairseq_ext/*.egg-info
$PY -c "import fairseq_ext, simple_kmeans; print('[setup] ok: fairseq_ext', fairseq_ext.__version__)"
