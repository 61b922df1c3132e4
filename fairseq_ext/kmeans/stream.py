"""Mini-batch k-means streamed over memory-mapped feature shards (``learn_kmeans.py --stream``).

For feature sets larger than memory: no training sample is held in RAM. Every sampled frame
(all of them with ``--percent -1``) is visited once per pass, in mini-batches of ``batch_size``
frames read from the shards with plain file reads; each mini-batch gathers pieces of
``batch_size / PIECES_PER_BATCH`` consecutive frames from random places of the data, so that a
batch mixes utterances and speakers. Centroids start from k-means++ on a uniform sample of
``seed_sample`` frames and are updated with scikit-learn's ``MiniBatchKMeans.partial_fit``
(per-centroid learning rates, reassignment of nearly empty clusters). Peak memory is about
``(seed_sample + 2 * batch_size) * dim * 4`` bytes plus the centroids and a 32 MiB read buffer,
whatever the data size.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, List, Tuple

import numpy as np

from fairseq_ext.base.errors import UserError
from fairseq_ext.kmeans.sample import Shard, materialize, read_rows
from fairseq_ext.kmeans.backends import FitInfo, inertia, kmeans_plusplus, limit_threads

logger = logging.getLogger("learn_kmeans")

PIECES_PER_BATCH = 8


def pieces(shards: List[Shard], piece_frames: int) -> np.ndarray:
    """``(shard, first frame, frames)`` rows cutting every sampled segment into runs of <= ``piece_frames``."""
    rows = []
    for i, shard in enumerate(shards):
        for start, length in zip(shard.starts.tolist(), shard.lens.tolist()):
            firsts = np.arange(start, start + length, piece_frames, dtype=np.int64)
            sizes = np.minimum(piece_frames, start + length - firsts)
            rows.append(np.stack([np.full(len(firsts), i, dtype=np.int64), firsts, sizes], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


def batches(shards: List[Shard], table: np.ndarray, batch_size: int,
            gen: np.random.Generator) -> Iterator[np.ndarray]:
    """Mini-batches (about ``batch_size`` frames, float32 (n, C)) covering every piece once, in random order."""
    dim = shards[0].feats.shape[1]
    buf = np.empty((batch_size + int(table[:, 2].max(initial=0)), dim), dtype=np.float32)
    n = 0
    for shard, first, size in table[gen.permutation(len(table))].tolist():
        read_rows(shards[shard], first, buf[n:n + size])
        n += size
        if n >= batch_size:
            yield buf[:n]
            n = 0
    if n:
        yield buf[:n]


def streamed_inertia(shards: List[Shard], centers: np.ndarray, chunk_bytes: int = 32 * 2**20) -> Tuple[float, int]:
    """``(sum of squared distances to the nearest centroid, frames)`` over every sampled frame.

    Frames are read in chunks of about ``chunk_bytes`` bytes.
    """
    chunk = max(1024, chunk_bytes // (4 * centers.shape[1]))
    buf = np.empty((chunk, centers.shape[1]), dtype=np.float32)
    total, frames = 0.0, 0
    for shard in shards:
        for start, length in zip(shard.starts.tolist(), shard.lens.tolist()):
            for s in range(start, start + length, chunk):
                n = min(chunk, start + length - s)
                read_rows(shard, s, buf[:n])
                total += inertia(buf[:n], centers)
                frames += n
    return total, frames


def fit_stream(shards: List[Shard], n_clusters: int, seed: int = 0, batch_size: int = 10000,
               passes: int = 1, seed_sample: int = 30000, reassignment_ratio: float = 0.01,
               threads=None):
    """Fit mini-batch k-means on every sampled frame of ``shards`` without loading them.

    Args:
        shards: the shards and sampled segments of :func:`fairseq_ext.kmeans.sample.open_shards`.
        batch_size: frames per mini-batch.
        passes: passes over all sampled frames.
        seed_sample: frames drawn uniformly for the k-means++ seeding.
        reassignment_ratio: scikit-learn's threshold for reassigning nearly empty clusters.
    Returns:
        ``(MiniBatchKMeans estimator, FitInfo)``; ``cluster_centers_`` is (K, C) float32.
    """
    from sklearn.cluster import MiniBatchKMeans

    if batch_size < 1 or passes < 1 or seed_sample < 1:
        raise UserError(f"--batch_size, --stream-passes and --seed-sample must be >= 1, got {batch_size}, "
                        f"{passes} and {seed_sample}")
    gen = np.random.default_rng([seed, 2])
    start = time.perf_counter()
    with limit_threads(threads):
        seed_frames = materialize(shards, max(seed_sample, n_clusters), gen)
        if len(seed_frames) < n_clusters:
            raise UserError(f"only {len(seed_frames)} frames to stream, fewer than n_clusters={n_clusters}: "
                            f"raise --percent or use fewer clusters")
        init = kmeans_plusplus(seed_frames, n_clusters, gen)
        logger.info("k-means++ seeding on %d frames: %.1f s", len(seed_frames), time.perf_counter() - start)
        del seed_frames
        km = MiniBatchKMeans(n_clusters=n_clusters, init=init, n_init=1, batch_size=batch_size,
                             compute_labels=False, reassignment_ratio=reassignment_ratio,
                             random_state=np.random.RandomState(seed))
        table = pieces(shards, max(1, batch_size // PIECES_PER_BATCH))
        total = int(table[:, 2].sum())
        n_batches = 0
        for p in range(passes):
            for batch in batches(shards, table, batch_size, gen):
                km.partial_fit(batch)
                n_batches += 1
            logger.info("pass %d/%d over %d frames: %d mini-batches, %.1f s", p + 1, passes, total, n_batches,
                        time.perf_counter() - start)
    km.cluster_centers_ = np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)
    return km, FitInfo("sklearn-stream", time.perf_counter() - start, n_batches)
