"""Reading training frames for k-means from memory-mapped feature shards.

Utterances are sampled like fairseq's ``learn_kmeans.py`` (``--percent``: ``rng.choice`` per shard,
in shard order); frames are read with plain file reads rather than through the memory map, so
that only the copies count in the process' resident memory (and in the peak it reports).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import feat_paths, load_feat_shard

logger = logging.getLogger("learn_kmeans")


@dataclass
class Shard:
    npy: Path
    feats: np.ndarray  # memory-mapped, (frames, dim)
    starts: np.ndarray  # first frame of each sampled segment, in sampling order
    lens: np.ndarray  # frames of each sampled segment


def open_shards(feat_dir: str, split: str, nshard: int, percent: float,
                rng: np.random.RandomState) -> List[Shard]:
    """Memory-map every shard and pick utterances like fairseq (``rng.choice`` per shard in order)."""
    if nshard < 1:
        raise UserError(f"nshard must be >= 1, got {nshard}")
    if not (percent < 0 or 0 < percent <= 1):
        raise UserError(f"--percent must be in (0, 1] (a fraction of utterances) or -1 for all, got {percent}")
    shards = []
    for rank in range(nshard):
        feats, lengths = load_feat_shard(feat_dir, split, rank, nshard)
        npy = feat_paths(feat_dir, split, rank, nshard)[0]
        if shards and feats.shape[1] != shards[0].feats.shape[1]:
            raise UserError(
                f"{npy} has dimension {feats.shape[1]} but {shards[0].npy} has {shards[0].feats.shape[1]}: "
                f"all shards of a split must come from the same feature extractor"
            )
        if percent < 0:
            starts, lens = np.zeros(1, dtype=np.int64), np.array([len(feats)], dtype=np.int64)
        else:
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            nsample = int(np.ceil(len(lengths) * percent))
            idx = rng.choice(len(lengths), nsample, replace=False)
            starts, lens = offsets[idx], lengths[idx]
            logger.info("sampled %d utterances, %d frames from shard %d/%d",
                        nsample, int(lens.sum()), rank, nshard)
        shards.append(Shard(npy, feats, starts, lens))
    return shards


def sample_positions(gen: np.random.Generator, total: int, k: int, block: int = 1 << 20) -> np.ndarray:
    """``k`` sorted distinct positions drawn uniformly from ``range(total)`` in O(k + block) memory."""
    nblocks = -(-total // block)
    sizes = np.full(nblocks, block, dtype=np.int64)
    sizes[-1] = total - block * (nblocks - 1)
    counts = gen.multivariate_hypergeometric(sizes, k, method="marginals") if nblocks > 1 else [k]
    parts = [b * block + np.sort(gen.choice(int(sizes[b]), int(c), replace=False))
             for b, c in enumerate(counts) if c]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def read_rows(shard: Shard, start: int, out: np.ndarray) -> None:
    """Fill ``out`` (n, C) with rows ``start:start+n`` of the shard.

    Plain file reads, not the memory map: mapped pages would count in the process' resident
    memory (and so in the reported peak) although only the copy is needed.
    """
    feats = shard.feats
    if (isinstance(feats, np.memmap) and feats.flags.c_contiguous and feats.dtype == out.dtype
            and out.flags.c_contiguous):
        row_bytes = feats.shape[1] * feats.itemsize
        with open(feats.filename, "rb") as f:
            f.seek(feats.offset + start * row_bytes)
            got = f.readinto(memoryview(out).cast("B"))
        if got == out.nbytes:
            return
        raise UserError(f"{shard.npy} is shorter than its header says: rerun the dumping step")
    out[:] = feats[start:start + len(out)]


def _gather_rows(shard: Shard, src: np.ndarray, dst: np.ndarray, out: np.ndarray, block_rows: int) -> None:
    """``out[dst] = shard rows src``, reading the shard in ascending blocks of at most ``block_rows``."""
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    buf = np.empty((block_rows, out.shape[1]), dtype=out.dtype)
    n_rows = len(shard.feats)
    i = 0
    while i < len(src):
        b0 = int(src[i])
        b1 = min(b0 + block_rows, n_rows)
        j = int(np.searchsorted(src, b1, side="left"))
        last = int(src[j - 1]) + 1
        read_rows(shard, b0, buf[:last - b0])
        out[dst[i:j]] = buf[src[i:j] - b0]
        i = j


def materialize(shards: List[Shard], max_frames: Optional[int], gen: np.random.Generator,
                block_bytes: int = 32 * 2**20) -> np.ndarray:
    """Read the sampled segments into one float32 array (N, C), in sampling order.

    When the sample has more than ``max_frames`` frames, a uniform random subset of its frames
    (kept in sampling order) is read instead, block by block, within ``max_frames`` rows of memory.
    """
    dim = shards[0].feats.shape[1]
    total = int(sum(int(s.lens.sum()) for s in shards))
    n = total if max_frames is None else min(total, max_frames)
    out = np.empty((n, dim), dtype=np.float32)
    if n == total:
        pos = 0
        for shard in progress(shards, desc="read", unit="shard"):
            for s, ln in zip(shard.starts.tolist(), shard.lens.tolist()):
                read_rows(shard, s, out[pos:pos + ln])
                pos += ln
        return out
    positions = sample_positions(gen, total, n)  # in the concatenation of all sampled segments
    block_rows = max(1, block_bytes // (4 * dim))
    shard_begin = 0
    for shard in progress(shards, desc="read", unit="shard"):
        seg_end = shard_begin + np.cumsum(shard.lens)
        lo, hi = np.searchsorted(positions, [shard_begin, seg_end[-1] if len(seg_end) else shard_begin])
        pos = positions[lo:hi]
        seg = np.searchsorted(seg_end, pos, side="right")
        src = shard.starts[seg] + (pos - (seg_end[seg] - shard.lens[seg]))
        _gather_rows(shard, src, np.arange(lo, hi), out, block_rows)
        shard_begin = int(seg_end[-1]) if len(seg_end) else shard_begin
    return out
