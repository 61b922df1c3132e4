#!/bin/bash
# Usage: sbatch --array=0-$((NSHARD-1)) [sbatch options] scripts/slurm_array.sh COMMAND [ARGS...]
#
# Run one shard of a sharded job per SLURM array task. COMMAND is any dumping script of the
# label pipeline given NSHARD and RANK as `env` (read from $SLURM_ARRAY_TASK_COUNT and
# $SLURM_ARRAY_TASK_ID) or with the placeholders {nshard} and {rank}, which this script
# replaces (use those, with NSHARD as a number, when resubmitting only some ranks):
#
#   sbatch --array=0-15 scripts/slurm_array.sh fairseq-ext-dump-mfcc man/ train env env feat/
#   sbatch --array=0-15 --gres=gpu:1 scripts/slurm_array.sh \
#       fairseq-ext-dump-hubert man/ train ckpt.pt 6 env env feat6/
#   sbatch --array=0-15 scripts/slurm_array.sh fairseq-ext-dump-km-label feat/ train km.mdl env env lab/
#   # redo what is not complete (NSHARD as a number: the array is no longer 0..N-1)
#   sbatch --array=$(fairseq-ext-status features man/ train 16 feat/ --todo) scripts/slurm_array.sh \
#       fairseq-ext-dump-mfcc man/ train 16 {rank} feat/
#
# The #SBATCH lines below are defaults; options given to sbatch on the command line win.
# Threads: OMP_NUM_THREADS (and OpenBLAS/MKL) = --cpus-per-task unless already set.
# Logs: ./fairseq-ext-shard_<job>_<rank>.log. Check the result with fairseq-ext-status (docs/cluster.md).
#
#SBATCH --job-name=fairseq-ext-shard
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=%x_%A_%a.log
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: sbatch --array=0-N scripts/slurm_array.sh COMMAND [ARGS...]" >&2
    exit 2
fi
if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    echo "slurm_array.sh: SLURM_ARRAY_TASK_ID is not set: submit with sbatch --array=0-N" >&2
    exit 2
fi

threads="${SLURM_CPUS_PER_TASK:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$threads}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$threads}"

args=()
for a in "$@"; do
    a="${a//\{rank\}/$SLURM_ARRAY_TASK_ID}"
    if [[ "$a" == *"{nshard}"* ]]; then
        count="${SLURM_ARRAY_TASK_COUNT:-}"
        if [[ -z "$count" || "${SLURM_ARRAY_TASK_MIN:-0}" != 0 || "${SLURM_ARRAY_TASK_MAX:-$((count - 1))}" != $((count - 1)) ]]; then
            echo "slurm_array.sh: {nshard} needs an array of exactly 0..N-1 (this one: ${SLURM_ARRAY_TASK_MIN:-?}..${SLURM_ARRAY_TASK_MAX:-?}, ${count:-?} tasks); give NSHARD as a number" >&2
            exit 2
        fi
        a="${a//\{nshard\}/$count}"
    fi
    args+=("$a")
done

echo "[slurm_array.sh] $(date '+%F %T') host $(hostname) job ${SLURM_ARRAY_JOB_ID:-?} task ${SLURM_ARRAY_TASK_ID} of ${SLURM_ARRAY_TASK_COUNT:-?}: ${args[*]}" >&2
exec "${args[@]}"
