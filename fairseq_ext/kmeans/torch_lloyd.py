"""Lloyd k-means in torch, on a GPU when there is one (``learn_kmeans.py --backend torch``).

The centers start from the same k-means++ seeding as the faiss backend
(:func:`fairseq_ext.kmeans.backends.seed_centers`, on ``seed_sample`` frames, on the CPU), then
``niter`` full-batch Lloyd iterations run in float32 on ``device`` over every training frame:

- the frames are visited in chunks of ``chunk_size`` frames; a chunk's squared distances come from
  ``|x|^2 - 2 x C^T + |C|^2`` (one matrix product), so the device holds the centers, one chunk and
  its (chunk, K) distances. Per-cluster sums are accumulated in float64.
- the frames come either from the training sample in memory (:class:`ArrayFrames`; kept on the GPU
  when it fits there, otherwise copied chunk by chunk) or straight from the memory-mapped shards
  (:class:`ShardFrames`, ``--stream``): each iteration then reads every sampled frame from disk,
  and neither the host nor the GPU ever holds more than one chunk.
- a cluster left empty is re-seeded with the frame farthest from its center (the next farthest for
  the next empty cluster, ...), which leaves its old cluster (as scikit-learn's ``KMeans`` does):
  deterministic, without random draws.
- iterations stop early when an update leaves the centers exactly unchanged.

On the CPU the result is deterministic for a seed and thread count. On CUDA the float32 sums of a
chunk are accumulated with atomic adds, so runs can differ in the last bits.
The fitted centers are saved as a scikit-learn estimator like the faiss backend's
(:func:`fairseq_ext.kmeans.backends.centers_to_estimator`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError
from fairseq_ext.kmeans.sample import Shard, materialize, read_rows
from fairseq_ext.kmeans.backends import (
    FAISS_NITER, FAISS_SEED_SAMPLE, FitInfo, INITS, TORCH_CHUNK_CPU, TORCH_CHUNK_CUDA, centers_to_estimator,
    limit_threads, seed_centers,
)

logger = logging.getLogger("learn_kmeans")


@dataclass
class TorchFitInfo(FitInfo):
    """:class:`FitInfo` plus what the Lloyd iterations measured."""

    inertia: float  # sum of squared distances of the training frames to the returned centers
    n_frames: int
    device: str


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device}: torch {torch.__version__} sees no CUDA device here "
                f"(torch.cuda.is_available() is False); use --device cpu or --device auto, or install a "
                f"CUDA build of torch on a machine with a GPU")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(device)
    raise UserError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """:func:`limit_threads` plus torch's intra-op threads; ``None`` = leave as is."""
    if not threads:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with limit_threads(threads):
            yield
    finally:
        torch.set_num_threads(old)


class ArrayFrames:
    """Chunks (n, C) float32 on ``device`` of frames held in memory.

    On CUDA the whole array is copied to the device once when it fits in half of the free memory
    (after room for a chunk's work); otherwise each chunk is copied at each iteration.
    """

    def __init__(self, feats: np.ndarray, chunk_size: int, device: torch.device, n_clusters: int):
        self.x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
        self.n_frames, self.dim = self.x.shape
        self.chunk_size, self.device = chunk_size, device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            work = 4 * chunk_size * (2 * n_clusters + 2 * self.dim)
            if self.x.numel() * 4 + work < free / 2:
                self.x = self.x.to(device)
                logger.info("training frames kept on %s (%.1f MiB)", device, self.x.numel() * 4 / 2**20)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for s in range(0, self.n_frames, self.chunk_size):
            yield self.x[s:s + self.chunk_size].to(self.device)


class ShardFrames:
    """Chunks (n, C) float32 on ``device`` read from the sampled segments of memory-mapped shards.

    Frames are read with plain file reads into one (chunk_size, C) host buffer, in shard order;
    a chunk is valid until the next one is requested.
    """

    def __init__(self, shards: List[Shard], chunk_size: int, device: torch.device):
        self.shards, self.chunk_size, self.device = shards, chunk_size, device
        self.n_frames = int(sum(int(s.lens.sum()) for s in shards))
        self.dim = int(shards[0].feats.shape[1])
        self.buf = np.empty((min(chunk_size, max(self.n_frames, 1)), self.dim), dtype=np.float32)

    def __iter__(self) -> Iterator[torch.Tensor]:
        n, size = 0, len(self.buf)
        for shard in self.shards:
            for start, length in zip(shard.starts.tolist(), shard.lens.tolist()):
                pos, end = start, start + length
                while pos < end:
                    take = min(size - n, end - pos)
                    read_rows(shard, pos, self.buf[n:n + take])
                    n, pos = n + take, pos + take
                    if n == size:
                        yield torch.from_numpy(self.buf).to(self.device)
                        n = 0
        if n:
            yield torch.from_numpy(self.buf[:n]).to(self.device)


@dataclass
class _Pass:
    """What one assignment pass over all frames accumulates."""

    sums: torch.Tensor  # (K, C) float64
    counts: torch.Tensor  # (K,) int64
    inertia: torch.Tensor  # () float64
    far_dist: torch.Tensor  # (<= K,) squared distances of the farthest frames to their centers
    far_x: torch.Tensor  # (<= K, C) those frames
    far_label: torch.Tensor  # (<= K,) their clusters


def assign_pass(frames, centers: torch.Tensor) -> _Pass:
    """Assign every frame of ``frames`` to its nearest center (K, C); accumulate sums, counts, inertia.

    Also keeps the K frames farthest from their centers, to re-seed empty clusters.
    """
    k, dim = centers.shape
    dev = centers.device
    c_sq = (centers * centers).sum(1)
    sums = torch.zeros(k, dim, dtype=torch.float64, device=dev)
    counts = torch.zeros(k, dtype=torch.int64, device=dev)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    part = torch.empty(k, dim, dtype=torch.float32, device=dev)
    far_dist = torch.empty(0, device=dev)
    far_x = torch.empty(0, dim, device=dev)
    far_label = torch.empty(0, dtype=torch.int64, device=dev)
    for x in frames:
        d = torch.addmm(c_sq, x, centers.T, alpha=-2)  # (n, K): |c|^2 - 2 x.c
        dist, label = d.min(1)
        del d
        dist = (dist + torch.linalg.vector_norm(x, dim=1).square_()).clamp_(min=0)  # (n,)
        total += dist.sum(dtype=torch.float64)
        part.zero_().index_add_(0, label, x)
        sums += part
        counts += torch.bincount(label, minlength=k)
        top = dist.topk(min(k, len(dist))).indices
        far_dist, far_x = torch.cat([far_dist, dist[top]]), torch.cat([far_x, x[top]])
        far_label = torch.cat([far_label, label[top]])
        if len(far_dist) > k:
            keep = far_dist.topk(k).indices
            far_dist, far_x, far_label = far_dist[keep], far_x[keep], far_label[keep]
    return _Pass(sums, counts, total, far_dist, far_x, far_label)


def update_centers(centers: torch.Tensor, p: _Pass) -> Tuple[torch.Tensor, int]:
    """New centers (K, C) float32 = cluster means; empty clusters take the farthest frames.

    Returns ``(centers, number of re-seeded clusters)``. A cluster with no frame keeps its old
    center only when no farthest frame can leave its cluster (every candidate is alone in it).
    """
    sums, counts = p.sums.clone(), p.counts.clone()
    empty = torch.nonzero(counts == 0).flatten().tolist()
    reseeded = []
    if empty:
        order = torch.argsort(p.far_dist, descending=True, stable=True).tolist()
        labels = p.far_label.tolist()
        n_in = counts.tolist()
        j = 0
        for e in empty:
            while j < len(order) and n_in[labels[order[j]]] <= 1:
                j += 1
            if j == len(order):
                break
            i = order[j]
            old = labels[i]
            sums[old] -= p.far_x[i]
            counts[old] -= 1
            n_in[old] -= 1
            sums[e] = p.far_x[i]
            counts[e] = 1
            n_in[e] = 1
            reseeded.append(e)
            j += 1
    new = (sums / counts.clamp(min=1)[:, None]).to(torch.float32)
    keep = counts == 0
    new[keep] = centers[keep]
    return new, len(reseeded)


def lloyd(frames, init: np.ndarray, niter: int, device: torch.device) -> Tuple[np.ndarray, float, int]:
    """``niter`` Lloyd iterations from ``init`` (K, C) over ``frames`` (an iterable of (n, C) chunks).

    Returns ``(centers (K, C) float32, inertia of the frames to them, updates done)``.
    """
    centers = torch.from_numpy(np.ascontiguousarray(init, dtype=np.float32)).to(device)
    done = 0
    bar = progress(total=niter, desc="lloyd", unit="it")
    try:
        while True:
            p = assign_pass(frames, centers)
            if done == niter:
                break
            new, reseeded = update_centers(centers, p)
            if reseeded:
                logger.info("iteration %d: %d empty cluster(s) re-seeded with the farthest frames", done + 1, reseeded)
            logger.debug("iteration %d: inertia %.6g", done + 1, float(p.inertia))
            bar.update(1)
            if torch.equal(new, centers):
                logger.info("converged after %d iterations (centers unchanged)", done)
                break
            centers, done = new, done + 1
    except torch.cuda.OutOfMemoryError as e:
        raise UserError(f"out of memory on {device} during k-means: lower --chunk-size "
                        f"(frames per chunk) or use --stream ({e})") from None
    finally:
        bar.close()
    return centers.cpu().numpy(), float(p.inertia), done


def default_chunk_size(device: torch.device) -> int:
    """Frames per chunk when ``--chunk-size`` is not given: 8192 on the CPU, 65536 on a GPU."""
    return TORCH_CHUNK_CUDA if device.type == "cuda" else TORCH_CHUNK_CPU


def _check(init: str, niter: int, chunk_size: Optional[int], seed_sample: int) -> None:
    chunk_size = 1 if chunk_size is None else chunk_size
    if init not in INITS:
        raise UserError(f"--init {init!r} is not supported by the torch backend; use one of {INITS}")
    if niter < 1 or chunk_size < 1 or seed_sample < 1:
        raise UserError(f"--niter, --chunk-size and --seed-sample must be >= 1, got {niter}, {chunk_size} "
                        f"and {seed_sample}")


def _initial(x: np.ndarray, n_clusters: int, seed: int, init: str, seed_sample: int) -> np.ndarray:
    if init == "k-means++":
        return seed_centers(x, n_clusters, seed, seed_sample)
    return x[np.random.default_rng(seed).choice(len(x), n_clusters, replace=False)].copy()


def _fit(frames, init: np.ndarray, seed: int, niter: int, device: torch.device, start: float):
    centers, total, done = lloyd(frames, init, niter, device)
    seconds = time.perf_counter() - start
    logger.info("torch Lloyd on %s: %d iterations over %d frames, %.1f s", device, done, frames.n_frames, seconds)
    if device.type == "cuda":
        logger.info("peak GPU memory: %.0f MiB", torch.cuda.max_memory_allocated(device) / 2**20)
    info = TorchFitInfo("torch", seconds, done, total, frames.n_frames, str(device))
    return centers_to_estimator(centers, seed=seed, n_iter=done), info


def fit_torch(feats: np.ndarray, n_clusters: int, seed: int = 0, init: str = "k-means++",
              niter: int = FAISS_NITER, seed_sample: int = FAISS_SEED_SAMPLE, device: str = "auto",
              chunk_size: Optional[int] = None, threads: Optional[int] = None):
    """k-means on frames in memory: k-means++ on ``seed_sample`` of them, then torch Lloyd on all.

    Args:
        feats: training frames (N, C); float32 C-contiguous avoids a copy.
        init: ``"k-means++"`` (the faiss backend's seeding: same start for a seed) or ``"random"``.
        niter: Lloyd iterations (fewer when the centers stop changing).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        chunk_size: frames per chunk (device memory: chunk x (C + K) floats besides the centers);
            ``None``: :func:`default_chunk_size`.
    Returns:
        ``(KMeans estimator, TorchFitInfo)``; deterministic on the CPU for a seed and thread count.
    """
    _check(init, niter, chunk_size, seed_sample)
    dev = resolve_device(device)
    start = time.perf_counter()
    with torch_threads(threads):
        x = np.ascontiguousarray(feats, dtype=np.float32)
        init_centers = _initial(x, n_clusters, seed, init, seed_sample)
        frames = ArrayFrames(x, chunk_size or default_chunk_size(dev), dev, n_clusters)
        return _fit(frames, init_centers, seed, niter, dev, start)


def fit_torch_stream(shards: List[Shard], n_clusters: int, seed: int = 0, init: str = "k-means++",
                     niter: int = FAISS_NITER, seed_sample: int = FAISS_SEED_SAMPLE, device: str = "auto",
                     chunk_size: Optional[int] = None, threads: Optional[int] = None):
    """Like :func:`fit_torch` on every sampled frame of ``shards``, read chunk by chunk at each iteration.

    The seeding runs on ``seed_sample`` frames drawn uniformly from the sampled segments; the host
    and the device hold one chunk at a time besides the centers and that seed sample.
    """
    _check(init, niter, chunk_size, seed_sample)
    dev = resolve_device(device)
    frames = ShardFrames(shards, chunk_size or default_chunk_size(dev), dev)
    if frames.n_frames < n_clusters:
        raise UserError(f"only {frames.n_frames} frames to cluster, fewer than n_clusters={n_clusters}: "
                        f"raise --percent or use fewer clusters")
    start = time.perf_counter()
    with torch_threads(threads):
        seed_frames = materialize(shards, max(seed_sample, n_clusters), np.random.default_rng([seed, 2]))
        init_centers = _initial(seed_frames, n_clusters, seed, init, seed_sample)
        del seed_frames
        return _fit(frames, init_centers, seed, niter, dev, start)
