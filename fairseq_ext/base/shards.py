"""Shards: fairseq's shard ranges, NSHARD/RANK from the environment, shard file names, reading feature shards."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

import numpy as np

from fairseq_ext.base.errors import UserError

logger = logging.getLogger("simple_kmeans")

# --------------------------------------------------------------------------- shards


def shard_range(tot: int, nshard: int, rank: int) -> Tuple[int, int]:
    """fairseq's shard range: ``[round(tot/nshard*rank), round(tot/nshard*(rank+1)))``."""
    if nshard < 1:
        raise UserError(f"nshard must be >= 1, got {nshard}")
    if not 0 <= rank < nshard:
        raise UserError(f"rank must be in [0, {nshard}), got {rank}")
    if nshard > tot:
        raise UserError(
            f"nshard={nshard} is larger than the number of utterances ({tot}): "
            f"use at most {tot} shards"
        )
    start = round(tot / nshard * rank)
    end = round(tot / nshard * (rank + 1))
    return start, end


SHARD_ENV: Tuple[Tuple[str, str], ...] = (
    ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID"),  # sbatch --array=0-(N-1): one task per shard
    ("WORLD_SIZE", "RANK"),  # torchrun, fairseq-ext-run-shards
)
"""``(nshard variable, rank variable)`` pairs read by :func:`resolve_shard`, first match wins."""

FROM_ENV = ("env", "-")
"""Values of a NSHARD / RANK argument that mean "read it from the environment"."""

ShardArg = Union[int, str, None]


def shard_arg(value: str) -> Union[int, str]:
    """argparse ``type`` of NSHARD / RANK: an integer, or ``env`` / ``-`` (resolved by :func:`resolve_shard`)."""
    if value.strip().lower() in FROM_ENV:
        return "env"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'env' (read from the environment), got {value!r}") from None


def _from_env(value: ShardArg) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in FROM_ENV)


def _env_int(env: Mapping[str, str], var: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise UserError(f"${var}={env[var]!r} is not an integer") from None


def resolve_shard(nshard: ShardArg, rank: ShardArg,
                  environ: Optional[Mapping[str, str]] = None) -> Tuple[int, int]:
    """``(nshard, rank)`` of a dumping job; ``"env"``, ``"-"`` or None are read from the environment.

    Sources, first match wins (both values come from the same source when both are ``env``):
    ``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_ID`` (a SLURM job array whose indices are the
    ranks), then ``WORLD_SIZE`` / ``RANK`` (torchrun, fairseq-ext-run-shards). The log line and
    every error name the variable a value came from. NSHARD from ``SLURM_ARRAY_TASK_COUNT`` is
    refused unless the array is exactly ``0..N-1`` (a rerun of a few ranks, ``--array=3,7``, must
    give NSHARD as a number).
    """
    env = os.environ if environ is None else environ
    origin = {"nshard": "the command line", "rank": "the command line"}
    want_n, want_r = _from_env(nshard), _from_env(rank)
    if want_n or want_r:
        def needed(pair: Tuple[str, str]) -> List[str]:
            return ([pair[0]] if want_n else []) + ([pair[1]] if want_r else [])

        source = next((pair for pair in SHARD_ENV if all(env.get(v, "").strip() for v in needed(pair))), None)
        if source is None:
            wanted = " and ".join(n for n, w in (("NSHARD", want_n), ("RANK", want_r)) if w)
            options = " or ".join("/".join(needed(pair)) for pair in SHARD_ENV)
            raise UserError(f"{wanted} is 'env' but none of {options} is set; give {wanted} as a "
                            f"number, or run the job in a SLURM array (sbatch --array=0-N) or under "
                            f"fairseq-ext-run-shards / torchrun")
        count_var, id_var = source
        if want_n:
            nshard, origin["nshard"] = _env_int(env, count_var), f"${count_var}"
            lo, hi = env.get("SLURM_ARRAY_TASK_MIN"), env.get("SLURM_ARRAY_TASK_MAX")
            if count_var.startswith("SLURM") and lo and hi and (lo.strip(), hi.strip()) != ("0", str(nshard - 1)):
                raise UserError(
                    f"NSHARD from ${count_var}={nshard} needs an array of exactly 0..{nshard - 1}, but this "
                    f"array spans {lo}..{hi}: give NSHARD as a number (array indices are the ranks)")
        if want_r:
            rank, origin["rank"] = _env_int(env, id_var), f"${id_var}"
    try:
        nshard, rank = int(nshard), int(rank)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"nshard and rank must be integers or 'env', got {nshard!r} and {rank!r}") from None
    if nshard < 1:
        raise UserError(f"nshard must be >= 1, got {nshard} (from {origin['nshard']})")
    if not 0 <= rank < nshard:
        raise UserError(
            f"rank {rank} (from {origin['rank']}) is not in [0, {nshard}) (nshard from {origin['nshard']})"
            + ("; SLURM array indices are the ranks: submit with --array=0-" + str(nshard - 1)
               if origin["rank"].startswith("$SLURM") else ""))
    if want_n or want_r:
        logger.info("shard %d of %d: rank from %s, nshard from %s", rank, nshard, origin["rank"], origin["nshard"])
    return nshard, rank


def shard_stem(directory: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """``{directory}/{split}_{rank}_{nshard}`` (append ``.npy``, ``.len`` or ``.km``)."""
    return Path(directory) / f"{split}_{rank}_{nshard}"


def feat_paths(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Tuple[Path, Path]:
    """Paths of a feature shard: ``(.npy, .len)``."""
    stem = shard_stem(feat_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".len")


def label_path(lab_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """Path of a label shard ``{split}_{rank}_{nshard}.km``."""
    stem = shard_stem(lab_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".km")


# --------------------------------------------------------------------------- reading shards


def read_lengths(len_path: os.PathLike | str) -> np.ndarray:
    """Read a ``.len`` file (one frame count per line) with errors naming the line."""
    len_path = Path(len_path)
    if not len_path.is_file():
        raise UserError(f"{len_path} does not exist: run the feature dumping step for this shard")
    out = []
    with open(len_path) as f:
        for i, line in enumerate(f, start=1):
            try:
                out.append(int(line))
            except ValueError:
                raise UserError(f"{len_path}:{i}: {line.strip()!r} is not a frame count") from None
    return np.asarray(out, dtype=np.int64)


def load_feat_shard(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int,
                    mmap: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Open a feature shard (memory-mapped by default) and check ``.npy`` against ``.len``.

    Returns:
        ``(feats, lengths)``: ``feats`` of shape ``(sum(lengths), C)``.
    """
    npy, lenp = feat_paths(feat_dir, split, rank, nshard)
    if not npy.is_file():
        raise UserError(f"{npy} does not exist: run the feature dumping step for shard {rank}/{nshard}")
    lengths = read_lengths(lenp)
    try:
        feats = np.load(npy, mmap_mode="r" if mmap else None)
    except Exception as e:
        raise UserError(f"cannot read {npy}: {e}; delete it and rerun the dumping step") from None
    if feats.ndim != 2:
        raise UserError(f"{npy} has shape {feats.shape}, expected (frames, dim)")
    if int(lengths.sum()) != feats.shape[0]:
        raise UserError(
            f"{npy} has {feats.shape[0]} frames but {lenp} sums to {int(lengths.sum())}: "
            f"the shard is inconsistent; delete both files and rerun the dumping step"
        )
    return feats, lengths
