#!/usr/bin/env bash
# Usage: bash scripts/setup_env.sh
#
# Installs fairseq-ext and everything it needs into the current Python environment
# (activate your venv/conda env first if you use one). Safe to rerun; takes about a minute.
# - torch: kept if already importable (e.g. your CUDA build on a GPU node); otherwise the CPU
#   wheel torch==2.13.0 (never a plain "torch", which would pull GBs of CUDA packages).
# - fairseq: the ve-fairseq 0.12.3 wheel (fairseq 0.12.3 for Python 3.11/3.12), with --no-deps
#   because its metadata asks for torchaudio, which this package does not use. pip's resolver
#   then reports "ve-fairseq ... requires torchaudio, which is not installed" on every install:
#   that one expected message is hidden here (said once below instead); any other is shown.
# - tensorboardX (requirements.txt; pure Python, no torch): fairseq's TensorBoard logging
#   (common.tensorboard_logdir of every shipped config).
# - fairseq-ext itself: a regular (non-editable) install, so that
#   `fairseq-hydra-train --user-dir fairseq_ext` finds it from any working directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
PIP="$PY -m pip --disable-pip-version-check -q"
EXPECTED_CONFLICT="requires torchaudio"

# pip install ARGS, its output shown except the resolver's expected torchaudio complaint (header
# included) when that is the only conflict it reports.
pip_install() {
  local log rc=0
  log=$(mktemp)
  $PIP install "$@" >"$log" 2>&1 || rc=$?
  if grep -q "^ERROR: pip's dependency resolver" "$log" && \
     ! sed -n "/^ERROR: pip's dependency resolver/,\$p" "$log" | tail -n +2 | grep -v -q "$EXPECTED_CONFLICT"; then
    sed "/^ERROR: pip's dependency resolver/,\$d" "$log" >&2
  else
    cat "$log" >&2
  fi
  rm -f "$log"
  return $rc
}

# importlib.metadata, not "import torch": importing torch before numpy is installed prints
# "Failed to initialize NumPy", which is harmless here but looks like a failure.
installed_version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }

if ! $PY -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  pip_install "torch==2.13.0"
fi
TORCH_VERSION=$(installed_version torch)
TORCH_VERSION=${TORCH_VERSION%%+*}
if ! $PY -c "import fairseq" >/dev/null 2>&1; then
  echo "[setup] installing fairseq (ve-fairseq==0.12.3, --no-deps)"
  pip_install --no-deps "ve-fairseq==0.12.3"
fi
echo "[setup] installing requirements (torch pinned to the installed $TORCH_VERSION)"
pip_install -r requirements.txt "torch==$TORCH_VERSION"
echo "[setup] installing fairseq-ext"
pip_install --no-deps --no-build-isolation --force-reinstall . >/dev/null
rm -rf build fairseq_ext.egg-info fairseq_ext/*.egg-info
$PY -c "import fairseq_ext, simple_kmeans; print('[setup] ok: fairseq_ext', fairseq_ext.__version__)"
echo "[setup] expected: fairseq is installed without torchaudio (not needed); pip's complaint about it was hidden"
