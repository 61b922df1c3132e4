"""Usage: python simple_kmeans/learn_kmeans.py FEAT_DIR SPLIT NSHARD KM_PATH N_CLUSTERS
           [--seed 0] [--percent -1] [--backend sklearn|faiss] [--max-memory GB] [--threads N]
           [--init k-means++] [--max_iter 100] [--batch_size 10000] [--tol 0.0]
           [--max_no_improvement 100] [--n_init 20] [--reassignment_ratio 0.0]
           [--niter 30] [--seed-sample 30000] [--max-points-per-centroid 2048]

Learn k-means centroids on dumped features (all shards ``{split}_{rank}_{NSHARD}.npy/.len`` of
FEAT_DIR) and save the model to KM_PATH with joblib, like fairseq's
examples/hubert/simple_kmeans/learn_kmeans.py (same positional arguments and options).

Backends:
  sklearn  fairseq's MiniBatchKMeans settings exactly (same centroids as fairseq for a seed).
  faiss    k-means++ seeding on --seed-sample frames, then --niter faiss Lloyd iterations on the
           sampled frames (at most K x --max-points-per-centroid of them): several times faster,
           at the same or lower inertia (benchmarks/bench_kmeans.py).
Either way KM_PATH holds a fitted scikit-learn estimator: fairseq's dump_km_label.py, our
dump_km_label.py and ``model.predict`` all read it.

Sampling: --percent P keeps a random P of the utterances of each shard (fairseq's rule); only the
kept frames are read from the memory-mapped shards. --max-memory GB bounds the memory of the
training sample (frames x dim x 4 bytes, plus 16 bytes a frame of k-means work arrays; default:
half of the machine's memory): a larger sample is subsampled to random frames, with a warning.
The log ends with the inertia per frame on the training sample (fairseq's "total intertia") and
the peak memory of the process.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from simple_kmeans import kmeans_backends as backends
from simple_kmeans.common import (PipelineError, check_writable_dir, feat_paths, load_feat_shard,
                                  progress, run_cli)

logger = logging.getLogger("learn_kmeans")

WORK_BYTES_PER_FRAME = 16  # per-frame k-means arrays (norms, weights, assignments) besides the frame


@dataclass
class KmeansSummary:
    """What :func:`main` returns."""

    km_path: str
    backend: str
    n_frames: int
    dim: int
    n_clusters: int
    inertia_per_frame: float
    fit_seconds: float
    peak_rss_mb: float


@dataclass
class _Shard:
    npy: Path
    feats: np.ndarray  # memory-mapped, (frames, dim)
    starts: np.ndarray  # first frame of each sampled segment, in sampling order
    lens: np.ndarray  # frames of each sampled segment


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_max_memory_gb() -> float:
    """Half of the machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 / 2


def open_shards(feat_dir: str, split: str, nshard: int, percent: float,
                rng: np.random.RandomState) -> List[_Shard]:
    """Memory-map every shard and pick utterances like fairseq (``rng.choice`` per shard in order)."""
    if nshard < 1:
        raise PipelineError(f"nshard must be >= 1, got {nshard}")
    if not (percent < 0 or 0 < percent <= 1):
        raise PipelineError(f"--percent must be in (0, 1] (a fraction of utterances) or -1 for all, got {percent}")
    shards = []
    for rank in range(nshard):
        feats, lengths = load_feat_shard(feat_dir, split, rank, nshard)
        npy = feat_paths(feat_dir, split, rank, nshard)[0]
        if shards and feats.shape[1] != shards[0].feats.shape[1]:
            raise PipelineError(
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
        shards.append(_Shard(npy, feats, starts, lens))
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


def _read_rows(shard: _Shard, start: int, out: np.ndarray) -> None:
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
        raise PipelineError(f"{shard.npy} is shorter than its header says: rerun the dumping step")
    out[:] = feats[start:start + len(out)]


def _gather_rows(shard: _Shard, src: np.ndarray, dst: np.ndarray, out: np.ndarray, block_rows: int) -> None:
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
        _read_rows(shard, b0, buf[:last - b0])
        out[dst[i:j]] = buf[src[i:j] - b0]
        i = j


def materialize(shards: List[_Shard], max_frames: Optional[int], gen: np.random.Generator,
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
                _read_rows(shard, s, out[pos:pos + ln])
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


def load_sample(feat_dir: str, split: str, nshard: int, percent: float, rng: np.random.RandomState,
                max_memory: Optional[float], seed: int) -> np.ndarray:
    """Sampled training frames (N, C) float32, within ``max_memory`` GiB."""
    shards = open_shards(feat_dir, split, nshard, percent, rng)
    dim = shards[0].feats.shape[1]
    total = int(sum(int(s.lens.sum()) for s in shards))
    budget_gb = default_max_memory_gb() if max_memory is None else max_memory
    if budget_gb <= 0:
        raise PipelineError(f"--max-memory must be positive, got {max_memory}")
    per_frame = 4 * dim + WORK_BYTES_PER_FRAME
    max_frames = max(1, int(budget_gb * 2**30 // per_frame))
    if total > max_frames:
        logger.warning(
            "the sample has %d frames (%.2f GiB with k-means work arrays), over --max-memory %.2f GiB: "
            "training on a random subset of %d frames (raise --max-memory or lower --percent)",
            total, total * per_frame / 2**30, budget_gb, max_frames)
    feats = materialize(shards, max_frames, np.random.default_rng([seed, 1]))
    logger.info("loaded feature with dimension %s (%.1f MiB)", feats.shape, feats.nbytes / 2**20)
    return feats


_SKLEARN_ONLY = {"max_iter": 100, "batch_size": 10000, "tol": 0.0, "max_no_improvement": 100, "n_init": 20,
                 "reassignment_ratio": 0.0}
_FAISS_ONLY = {"niter": backends.FAISS_NITER, "seed_sample": backends.FAISS_SEED_SAMPLE,
               "max_points_per_centroid": backends.FAISS_MAX_POINTS_PER_CENTROID}


def _warn_unused_options(backend: str, kwargs: dict) -> None:
    other = _FAISS_ONLY if backend == "sklearn" else _SKLEARN_ONLY
    changed = [k for k, default in other.items() if kwargs[k] != default]
    if changed:
        logger.warning("options %s have no effect with --backend %s", ", ".join(changed), backend)


def main(feat_dir: str, split: str, nshard: int, km_path: str, n_clusters: int, seed: int = 0,
         percent: float = -1.0, init: str = "k-means++", max_iter: int = 100, batch_size: int = 10000,
         tol: float = 0.0, max_no_improvement: int = 100, n_init: int = 20,
         reassignment_ratio: float = 0.0, backend: str = "sklearn", max_memory: Optional[float] = None,
         niter: int = backends.FAISS_NITER, seed_sample: int = backends.FAISS_SEED_SAMPLE,
         max_points_per_centroid: int = backends.FAISS_MAX_POINTS_PER_CENTROID,
         threads: Optional[int] = None) -> KmeansSummary:
    """Train k-means on the sampled frames of all shards and save it to ``km_path`` (joblib)."""
    if backend not in backends.BACKENDS:
        raise PipelineError(f"unknown --backend {backend!r}; use one of {backends.BACKENDS}")
    if n_clusters < 1:
        raise PipelineError(f"n_clusters must be >= 1, got {n_clusters}")
    if init not in backends.INITS:
        raise PipelineError(f"--init {init!r} is not supported; use one of {backends.INITS}")
    _warn_unused_options(backend, locals())
    check_writable_dir(Path(km_path).resolve().parent)
    # fairseq seeds numpy's global state, samples utterances from it, then fits with it
    rng = np.random.RandomState(seed)
    feats = load_sample(feat_dir, split, nshard, percent, rng, max_memory, seed)
    if len(feats) < n_clusters:
        raise PipelineError(
            f"only {len(feats)} frames were sampled from {feat_dir}/{split}_*_{nshard}.npy, fewer than "
            f"n_clusters={n_clusters}: raise --percent or use fewer clusters"
        )
    if backend == "sklearn":
        model, info = backends.fit_sklearn(
            feats, n_clusters, rng, threads=threads, init=init, max_iter=max_iter,
            batch_size=batch_size, tol=tol, max_no_improvement=max_no_improvement, n_init=n_init,
            reassignment_ratio=reassignment_ratio)
    else:
        model, info = backends.fit_faiss(feats, n_clusters, seed=seed, init=init, niter=niter,
                                         seed_sample=seed_sample, threads=threads,
                                         max_points_per_centroid=max_points_per_centroid)
    logger.info("%s k-means (K=%d) fitted on %d frames in %.1f s", backend, n_clusters, len(feats), info.seconds)
    backends.save_model(model, km_path)
    with backends.limit_threads(threads):
        per_frame = backends.inertia(feats, model.cluster_centers_) / len(feats)
    summary = KmeansSummary(str(km_path), backend, len(feats), feats.shape[1], n_clusters,
                            per_frame, info.seconds, peak_rss_mb())
    logger.info("inertia per frame: %.5f", per_frame)
    logger.info("peak memory: %.0f MiB", summary.peak_rss_mb)
    logger.info("saved %s; finished successfully", km_path)
    return summary


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("feat_dir", help="folder with {split}_{rank}_{nshard}.npy/.len feature shards")
    p.add_argument("split")
    p.add_argument("nshard", type=int)
    p.add_argument("km_path", help="output joblib file")
    p.add_argument("n_clusters", type=int)
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--percent", default=-1.0, type=float,
                   help="fraction of utterances of each shard to sample; -1 for all (default)")
    p.add_argument("--backend", default="sklearn", choices=backends.BACKENDS,
                   help="sklearn: fairseq's MiniBatchKMeans (default); faiss: k-means++ + faiss Lloyd, faster")
    p.add_argument("--max-memory", "--max_memory", dest="max_memory", type=float, default=None,
                   metavar="GB", help="memory bound for the training sample (default: half the machine's)")
    p.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads (default: all cores)")
    p.add_argument("--init", default="k-means++", help="k-means++ or random")
    g = p.add_argument_group("sklearn backend (fairseq's MiniBatchKMeans options)")
    g.add_argument("--max_iter", "--max-iter", dest="max_iter", default=100, type=int)
    g.add_argument("--batch_size", "--batch-size", dest="batch_size", default=10000, type=int)
    g.add_argument("--tol", default=0.0, type=float)
    g.add_argument("--max_no_improvement", "--max-no-improvement", dest="max_no_improvement",
                   default=100, type=int)
    g.add_argument("--n_init", "--n-init", dest="n_init", default=20, type=int)
    g.add_argument("--reassignment_ratio", "--reassignment-ratio", dest="reassignment_ratio",
                   default=0.0, type=float)
    g = p.add_argument_group("faiss backend")
    g.add_argument("--niter", default=backends.FAISS_NITER, type=int, help="Lloyd iterations")
    g.add_argument("--seed-sample", "--seed_sample", dest="seed_sample", default=backends.FAISS_SEED_SAMPLE,
                   type=int, help="frames sampled for the k-means++ seeding")
    g.add_argument("--max-points-per-centroid", "--max_points_per_centroid", dest="max_points_per_centroid",
                   default=backends.FAISS_MAX_POINTS_PER_CENTROID, type=int,
                   help="Lloyd iterations use at most K x this many random frames")
    return p


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
