"""k-means backends behind ``learn_kmeans.py``: fairseq's sklearn settings and faster faiss/torch ones.

All return a fitted scikit-learn estimator, so the saved joblib file is read by fairseq's own
``dump_km_label.py`` (which only uses ``cluster_centers_``), by ``predict`` and by any other tool,
without this package being importable.

- ``sklearn``: ``MiniBatchKMeans`` with exactly fairseq's settings (``compute_labels=False``,
  ``init_size=None``, ...). Given the same random state it gives fairseq's centroids.
- ``faiss``: k-means++ seeding (:func:`kmeans_plusplus`, float32) on a random sample of
  ``seed_sample`` frames, then ``niter`` full-batch Lloyd iterations with faiss from those
  centroids (on at most ``K * max_points_per_centroid`` random frames). faiss' own random seeding
  ends ~7% worse in inertia on HuBERT features; seeding with k-means++ matches or beats the sklearn
  inertia in a fraction of the time (benchmarks/bench_kmeans.py).
- ``torch``: the same k-means++ seeding, then Lloyd iterations in torch over all frames, on a GPU
  when there is one, chunk by chunk (:mod:`fairseq_ext.kmeans.torch_lloyd`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("kmeans_backends")

BACKENDS = ("sklearn", "faiss", "torch")
INITS = ("k-means++", "random")

# faiss backend defaults, tuned with benchmarks/bench_kmeans.py (K=100 on 1M x 39 MFCC-like frames,
# K=500 on 200k x 768 HuBERT-like frames).
FAISS_NITER = 30
FAISS_SEED_SAMPLE = 30000
# Lloyd iterations run on at most K * this many frames (faiss subsamples; its own default is 256,
# which costs ~1% inertia): 2048 frames a centroid lose ~0.3% inertia against all of 1M MFCC frames
# and make K=100 five times faster.
FAISS_MAX_POINTS_PER_CENTROID = 2048
# torch backend (simple_kmeans/kmeans_torch.py): default frames per chunk of the Lloyd iterations; the
# device holds about chunk x (C + K) floats besides the centers (65536 x (768 + 500) x 4 B = 332 MB).
# On the CPU, chunks that fit in cache are ~15% faster than 32k-frame ones (768-dim, K=100..500, 1 thread);
# on a GPU large chunks keep kernel launches negligible.
TORCH_CHUNK_CPU = 8192
TORCH_CHUNK_CUDA = 65536


@dataclass
class FitInfo:
    """What a backend reports besides the estimator."""

    backend: str
    seconds: float
    n_iter: int


@contextlib.contextmanager
def limit_threads(threads: Optional[int]) -> Iterator[None]:
    """Limit BLAS/OpenMP threads (numpy, sklearn, faiss) inside the block; ``None`` = leave as is."""
    if not threads:
        yield
        return
    import faiss
    from threadpoolctl import threadpool_limits

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        faiss.omp_set_num_threads(old)


# --------------------------------------------------------------------------- sklearn (fairseq)


def sklearn_model(n_clusters: int, init: str = "k-means++", max_iter: int = 100,
                  batch_size: int = 10000, tol: float = 0.0, max_no_improvement: int = 100,
                  n_init: int = 20, reassignment_ratio: float = 0.0, random_state=None,
                  verbose: int = 0):
    """fairseq's ``MiniBatchKMeans`` settings (``examples/hubert/simple_kmeans/learn_kmeans.py``)."""
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(
        n_clusters=n_clusters, init=init, max_iter=max_iter, batch_size=batch_size,
        verbose=verbose, compute_labels=False, tol=tol, max_no_improvement=max_no_improvement,
        init_size=None, n_init=n_init, reassignment_ratio=reassignment_ratio,
        random_state=random_state,
    )


def fit_sklearn(feats: np.ndarray, n_clusters: int, random_state: np.random.RandomState,
                threads: Optional[int] = None, **settings):
    """Fit fairseq's MiniBatchKMeans on ``feats`` of shape (N, C).

    ``random_state`` is a ``RandomState`` that fairseq would have used as numpy's global state
    (seeded, then used for utterance sampling), so the result equals fairseq's.
    """
    km = sklearn_model(n_clusters, random_state=random_state, **settings)
    start = time.perf_counter()
    with limit_threads(threads):
        km.fit(feats)
    return km, FitInfo("sklearn", time.perf_counter() - start, int(km.n_iter_))


# --------------------------------------------------------------------------- faiss


def fit_faiss(feats: np.ndarray, n_clusters: int, seed: int = 0, init: str = "k-means++",
              niter: int = FAISS_NITER, seed_sample: int = FAISS_SEED_SAMPLE,
              max_points_per_centroid: int = FAISS_MAX_POINTS_PER_CENTROID,
              threads: Optional[int] = None):
    """k-means++ on a ``seed_sample``-frame sample, then faiss Lloyd iterations on ``feats``.

    Args:
        feats: training frames, shape (N, C); float32 C-contiguous avoids a copy.
        init: ``"k-means++"`` (seeded as above) or ``"random"`` (faiss' own random init).
        niter: Lloyd iterations.
        seed_sample: frames drawn (without replacement) for the k-means++ seeding.
        max_points_per_centroid: the Lloyd iterations use at most ``K * this`` random frames.
    Returns:
        ``(KMeans estimator, FitInfo)``; deterministic for a given seed and thread count.
    """
    import faiss

    if init not in INITS:
        raise UserError(f"--init {init!r} is not supported by the faiss backend; use one of {INITS}")
    x = np.ascontiguousarray(feats, dtype=np.float32)
    n, dim = x.shape
    start = time.perf_counter()
    with limit_threads(threads):
        init_centroids = seed_centers(x, n_clusters, seed, seed_sample) if init == "k-means++" else None
        if n > n_clusters * max_points_per_centroid:
            logger.info("Lloyd iterations on a random %d of the %d frames (--max-points-per-centroid %d)",
                        n_clusters * max_points_per_centroid, n, max_points_per_centroid)
        km = faiss.Kmeans(dim, n_clusters, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=max_points_per_centroid)
        km.train(x, init_centroids=init_centroids)
    centers = np.array(km.centroids, dtype=np.float32).reshape(n_clusters, dim)
    seconds = time.perf_counter() - start
    return centers_to_estimator(centers, seed=seed, n_iter=niter), FitInfo("faiss", seconds, niter)


def seed_centers(x: np.ndarray, n_clusters: int, seed: int, seed_sample: int = FAISS_SEED_SAMPLE) -> np.ndarray:
    """k-means++ centers (K, C) float32 from ``seed_sample`` frames of ``x`` (N, C) drawn with ``seed``.

    The seeding of the faiss and torch backends: both start from the same centers for a seed.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = len(x)
    sample = x[np.sort(rng.choice(n, size=seed_sample, replace=False, shuffle=False))] if n > seed_sample else x
    centers = kmeans_plusplus(sample, n_clusters, rng)
    logger.info("k-means++ seeding on %d frames: %.1f s", len(sample), time.perf_counter() - start)
    return centers


def kmeans_plusplus(x: np.ndarray, n_clusters: int, rng: np.random.Generator,
                    n_trials: Optional[int] = None) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii) in float32.

    Each new center is the best of ``n_trials`` (default ``2 + log K``, as in scikit-learn)
    candidates drawn with probability proportional to the squared distance to the nearest chosen
    center. Unlike ``sklearn.cluster.kmeans_plusplus``, distances stay in float32 (sklearn upcasts
    float32 data to float64 chunk by chunk, which makes its seeding of 768-dim features slow).

    Args:
        x: (N, C) float32 frames.
    Returns:
        (K, C) float32 initial centers.
    """
    n = len(x)
    n_trials = n_trials or 2 + int(np.log(n_clusters))
    sq_norms = np.einsum("ij,ij->i", x, x)

    def sq_dist(rows: np.ndarray) -> np.ndarray:  # (len(rows), N)
        c = x[rows]
        d = sq_norms[rows, None] - 2 * (c @ x.T) + sq_norms[None, :]
        return np.maximum(d, 0, out=d)

    centers = np.empty((n_clusters, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centers[0] = x[first]
    closest = sq_dist(np.array([first]))[0]
    potential = float(closest.sum(dtype=np.float64))
    for c in range(1, n_clusters):
        if potential <= 0:  # fewer distinct frames than clusters: repeat frames
            cand = rng.integers(n, size=1)
        else:
            cum = np.cumsum(closest, dtype=np.float64)
            cand = np.searchsorted(cum, rng.uniform(size=n_trials) * cum[-1], side="right")
            cand = np.minimum(cand, n - 1)
        dist = np.minimum(sq_dist(cand), closest[None, :])
        pots = dist.sum(1, dtype=np.float64)
        best = int(np.argmin(pots))
        closest, potential = dist[best], float(pots[best])
        centers[c] = x[cand[best]]
    return centers


def centers_to_estimator(centers: np.ndarray, seed: int = 0, n_iter: int = 0):
    """A fitted ``sklearn.cluster.KMeans`` whose ``cluster_centers_`` are ``centers`` (K, C).

    It is fitted by sklearn itself (on the centers, from the centers), so every fitted attribute
    ``predict``/``transform`` need exists whatever the sklearn version; then the centers are set
    back exactly.
    """
    import warnings

    from sklearn.cluster import KMeans

    centers = np.ascontiguousarray(centers, dtype=np.float32)
    km = KMeans(n_clusters=len(centers), init=centers, n_init=1, max_iter=1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate centers would warn about distinct points
        km.fit(centers)
    km.cluster_centers_ = centers.copy()
    km.n_iter_ = n_iter
    km.labels_ = np.arange(len(centers), dtype=np.int32)
    return km


# --------------------------------------------------------------------------- shared


def inertia(feats: np.ndarray, centers: np.ndarray, chunk: int = 1 << 16) -> float:
    """Sum of squared distances of ``feats`` (N, C) to their nearest center (K, C)."""
    import faiss

    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    total = 0.0
    for s in range(0, len(feats), chunk):
        d, _ = index.search(np.ascontiguousarray(feats[s:s + chunk], dtype=np.float32), 1)
        total += float(np.maximum(d, 0).sum(dtype=np.float64))
    return total


def save_model(model, km_path: os.PathLike | str) -> None:
    """``joblib.dump`` to a temporary name, renamed onto ``km_path`` when complete."""
    import joblib

    try:
        with atomic_output(km_path, "wb") as f:
            joblib.dump(model, f)
    except OSError as e:
        raise UserError(f"cannot write the k-means model {km_path}: {e}") from None


def load_centers(km_path: os.PathLike | str) -> np.ndarray:
    """``cluster_centers_`` (K, C) of a joblib k-means model (ours or fairseq's), with clear errors."""
    import joblib

    if not os.path.isfile(km_path):
        raise UserError(f"k-means model {km_path} does not exist: train it with learn_kmeans.py")
    try:
        model = joblib.load(km_path)
    except Exception as e:  # joblib/pickle raise many types for corrupt files
        raise UserError(f"{km_path} is not a readable k-means model (joblib.load failed: {type(e).__name__}: {e}); "
                        f"it is corrupt or another kind of file: train it again with learn_kmeans.py") from None
    centers = getattr(model, "cluster_centers_", None)
    if centers is None:
        raise UserError(
            f"{km_path} holds a {type(model).__name__} without cluster_centers_: "
            f"expected a fitted k-means model from learn_kmeans.py"
        )
    centers = np.asarray(centers)
    if centers.ndim != 2 or not np.issubdtype(centers.dtype, np.floating):
        raise UserError(f"{km_path}: cluster_centers_ has shape {centers.shape} / dtype {centers.dtype}, "
                        f"expected a (K, dim) float array")
    return centers
