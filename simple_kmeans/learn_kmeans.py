"""Usage: python simple_kmeans/learn_kmeans.py FEAT_DIR SPLIT NSHARD KM_PATH N_CLUSTERS
           [--seed 0] [--percent -1] [--backend faiss|sklearn|torch] [--max-memory GB] [--threads N]
           [--init k-means++] [--max_iter 100] [--batch_size 10000] [--tol 0.0]
           [--max_no_improvement 100] [--n_init 20] [--reassignment_ratio 0.0]
           [--niter 30] [--seed-sample 30000] [--max-points-per-centroid 2048]
           [--stream [--stream-passes 1]] [--device auto|cpu|cuda] [--chunk-size N]

Learn k-means centroids on dumped features (all shards ``{split}_{rank}_{NSHARD}.npy/.len`` of
FEAT_DIR) and save the model to KM_PATH with joblib, like fairseq's
examples/hubert/simple_kmeans/learn_kmeans.py (same positional arguments and options).

Backends:
  faiss    (the default, as in the label pipeline) k-means++ seeding on --seed-sample frames, then
           --niter faiss Lloyd iterations on the sampled frames (at most K x
           --max-points-per-centroid of them): 7-12x faster than fairseq's script, at the same or
           lower inertia (BENCHMARKS.md, benchmarks/bench_kmeans.py).
  sklearn  fairseq's MiniBatchKMeans settings exactly: the same centroids as fairseq's
           learn_kmeans.py for a seed (use it to reproduce fairseq's labels bit for bit).
  torch    the faiss backend's k-means++ seeding, then --niter Lloyd iterations in torch over all
           sampled frames, on CUDA when available (--device auto, the default), else on the CPU
           (--device cpu|cuda|cuda:N to choose). Distances are computed --chunk-size frames at a time,
           so the device holds only the centroids and one chunk besides the data; on a GPU the data
           stay there when they fit in half its free memory.
  sklearn --stream  (--stream alone means this)
           for data larger than memory: nothing is loaded; MiniBatchKMeans.partial_fit streams
           over every sampled frame in mini-batches of --batch_size frames read from the shards
           (--stream-passes passes), from k-means++ centroids of --seed-sample frames. Memory
           stays flat as the data grows (benchmarks/bench_kmeans_memory.py).
  torch --stream
           full-batch Lloyd iterations over every sampled frame, read from the memory-mapped shards
           chunk by chunk at each iteration: host and device hold the centroids and one chunk
           (plus --seed-sample frames for the seeding), whatever the data size.
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
from typing import Optional

import numpy as np

from fairseq_ext.base.atomic import check_writable_dir
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.kmeans import backends
from fairseq_ext.kmeans.sample import materialize, open_shards

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_max_memory_gb() -> float:
    """Half of the machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 / 2


def load_sample(feat_dir: str, split: str, nshard: int, percent: float, rng: np.random.RandomState,
                max_memory: Optional[float], seed: int) -> np.ndarray:
    """Sampled training frames (N, C) float32, within ``max_memory`` GiB."""
    shards = open_shards(feat_dir, split, nshard, percent, rng)
    dim = shards[0].feats.shape[1]
    total = int(sum(int(s.lens.sum()) for s in shards))
    budget_gb = default_max_memory_gb() if max_memory is None else max_memory
    if budget_gb <= 0:
        raise UserError(f"--max-memory must be positive, got {max_memory}")
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


_TORCH_ONLY = {"device": "auto", "chunk_size": None}


_STREAM_UNUSED = {k: v for k, v in {**_SKLEARN_ONLY, **_FAISS_ONLY}.items()
                  if k not in ("batch_size", "reassignment_ratio", "seed_sample")}


def _warn_unused_options(backend: str, kwargs: dict) -> None:
    what = f"--backend {backend}" + (" --stream" if kwargs["stream"] else "")
    if backend == "torch":
        other = {**_SKLEARN_ONLY, "max_points_per_centroid": backends.FAISS_MAX_POINTS_PER_CENTROID,
                 "stream_passes": 1, **({"max_memory": None} if kwargs["stream"] else {})}
    elif kwargs["stream"]:
        other = {**_STREAM_UNUSED, "max_memory": None, "init": "k-means++", **_TORCH_ONLY}
    else:
        other = {**(_FAISS_ONLY if backend == "sklearn" else _SKLEARN_ONLY), "stream_passes": 1, **_TORCH_ONLY}
    changed = [k for k, default in other.items() if kwargs[k] != default]
    if changed:
        logger.warning("options %s have no effect with %s", ", ".join(changed), what)


def _fit_streaming(feat_dir: str, split: str, nshard: int, km_path: str, n_clusters: int, seed: int,
                   percent: float, batch_size: int, passes: int, seed_sample: int, reassignment_ratio: float,
                   threads: Optional[int]) -> KmeansSummary:
    """``--stream``: mini-batch k-means over every sampled frame, read batch by batch (kmeans_stream)."""
    from fairseq_ext.kmeans.stream import fit_stream, streamed_inertia

    shards = open_shards(feat_dir, split, nshard, percent, np.random.RandomState(seed))
    model, info = fit_stream(shards, n_clusters, seed=seed, batch_size=batch_size, passes=passes,
                             seed_sample=seed_sample, reassignment_ratio=reassignment_ratio, threads=threads)
    backends.save_model(model, km_path)
    with backends.limit_threads(threads):
        total, frames = streamed_inertia(shards, model.cluster_centers_)
    logger.info("streamed mini-batch k-means (K=%d) on %d frames in %.1f s", n_clusters, frames, info.seconds)
    return KmeansSummary(str(km_path), "sklearn-stream", frames, shards[0].feats.shape[1], n_clusters,
                         total / frames, info.seconds, peak_rss_mb())


def _fit_torch_streaming(feat_dir: str, split: str, nshard: int, km_path: str, n_clusters: int, seed: int,
                         percent: float, **torch_options) -> KmeansSummary:
    """``--backend torch --stream``: Lloyd iterations reading every sampled frame from the shards each time."""
    from fairseq_ext.kmeans.torch_lloyd import fit_torch_stream

    shards = open_shards(feat_dir, split, nshard, percent, np.random.RandomState(seed))
    model, info = fit_torch_stream(shards, n_clusters, seed=seed, **torch_options)
    backends.save_model(model, km_path)
    return KmeansSummary(str(km_path), "torch-stream", info.n_frames, shards[0].feats.shape[1], n_clusters,
                         info.inertia / info.n_frames, info.seconds, peak_rss_mb())


def main(feat_dir: str, split: str, nshard: int, km_path: str, n_clusters: int, seed: int = 0,
         percent: float = -1.0, init: str = "k-means++", max_iter: int = 100, batch_size: int = 10000,
         tol: float = 0.0, max_no_improvement: int = 100, n_init: int = 20,
         reassignment_ratio: float = 0.0, backend: Optional[str] = None, max_memory: Optional[float] = None,
         niter: int = backends.FAISS_NITER, seed_sample: int = backends.FAISS_SEED_SAMPLE,
         max_points_per_centroid: int = backends.FAISS_MAX_POINTS_PER_CENTROID,
         threads: Optional[int] = None, stream: bool = False, stream_passes: int = 1,
         device: str = "auto", chunk_size: Optional[int] = None) -> KmeansSummary:
    """Train k-means on the sampled frames of all shards and save it to ``km_path`` (joblib).

    With ``stream``, the frames are not loaded: with the sklearn backend mini-batch k-means streams
    over them ``stream_passes`` times (:mod:`fairseq_ext.kmeans.stream`); with the torch backend
    each Lloyd iteration reads them chunk by chunk (:mod:`fairseq_ext.kmeans.torch_lloyd`).
    ``device`` and ``chunk_size`` are the torch backend's. ``backend`` None: faiss, or sklearn with
    ``stream``.
    """
    if backend is None:
        backend = "sklearn" if stream else "faiss"
    if backend not in backends.BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; use one of {backends.BACKENDS}")
    if n_clusters < 1:
        raise UserError(f"n_clusters must be >= 1, got {n_clusters}")
    if init not in backends.INITS:
        raise UserError(f"--init {init!r} is not supported; use one of {backends.INITS}")
    _warn_unused_options(backend, locals())
    if stream and backend == "faiss":
        raise UserError("--stream reads the frames from the shards batch by batch: use it with "
                        "--backend sklearn (mini-batch k-means) or --backend torch (Lloyd)")
    torch_options = dict(init=init, niter=niter, seed_sample=seed_sample, device=device, chunk_size=chunk_size,
                         threads=threads)
    if backend == "torch":
        from fairseq_ext.kmeans.torch_lloyd import resolve_device

        resolve_device(device)  # a bad --device fails before any data is read
    check_writable_dir(Path(km_path).resolve().parent)
    if stream:
        if backend == "torch":
            summary = _fit_torch_streaming(feat_dir, split, nshard, km_path, n_clusters, seed, percent,
                                           **torch_options)
        else:
            summary = _fit_streaming(feat_dir, split, nshard, km_path, n_clusters, seed, percent, batch_size,
                                     stream_passes, seed_sample, reassignment_ratio, threads)
        logger.info("inertia per frame: %.5f", summary.inertia_per_frame)
        logger.info("peak memory: %.0f MiB", summary.peak_rss_mb)
        logger.info("saved %s; finished successfully", km_path)
        return summary
    # fairseq seeds numpy's global state, samples utterances from it, then fits with it
    rng = np.random.RandomState(seed)
    feats = load_sample(feat_dir, split, nshard, percent, rng, max_memory, seed)
    if len(feats) < n_clusters:
        raise UserError(
            f"only {len(feats)} frames were sampled from {feat_dir}/{split}_*_{nshard}.npy, fewer than "
            f"n_clusters={n_clusters}: raise --percent or use fewer clusters"
        )
    if backend == "sklearn":
        model, info = backends.fit_sklearn(
            feats, n_clusters, rng, threads=threads, init=init, max_iter=max_iter,
            batch_size=batch_size, tol=tol, max_no_improvement=max_no_improvement, n_init=n_init,
            reassignment_ratio=reassignment_ratio)
    elif backend == "torch":
        from fairseq_ext.kmeans.torch_lloyd import fit_torch

        model, info = fit_torch(feats, n_clusters, seed=seed, **torch_options)
    else:
        model, info = backends.fit_faiss(feats, n_clusters, seed=seed, init=init, niter=niter,
                                         seed_sample=seed_sample, threads=threads,
                                         max_points_per_centroid=max_points_per_centroid)
    logger.info("%s k-means (K=%d) fitted on %d frames in %.1f s", backend, n_clusters, len(feats), info.seconds)
    backends.save_model(model, km_path)
    if backend == "torch":  # measured on the device by the last assignment pass (same formula)
        per_frame = info.inertia / len(feats)
    else:
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
    p.add_argument("--backend", default=None, choices=backends.BACKENDS,
                   help="faiss: k-means++ + faiss Lloyd, several times faster at the same or lower inertia "
                        "(default; sklearn with --stream); sklearn: fairseq's MiniBatchKMeans, the same "
                        "centroids as fairseq's learn_kmeans.py for a seed; torch: k-means++ + torch Lloyd, "
                        "on a GPU when there is one")
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
    g.add_argument("--stream", action="store_true",
                   help="do not load the frames: stream mini-batches of --batch_size frames over all sampled "
                        "frames (memory independent of the data size; --seed-sample frames seed k-means++); "
                        "with --backend torch: each Lloyd iteration reads them --chunk-size frames at a time")
    g.add_argument("--stream-passes", "--stream_passes", dest="stream_passes", default=1, type=int,
                   help="--stream: passes over the data (default: 1)")
    g = p.add_argument_group("faiss and torch backends")
    g.add_argument("--niter", default=backends.FAISS_NITER, type=int, help="Lloyd iterations")
    g.add_argument("--seed-sample", "--seed_sample", dest="seed_sample", default=backends.FAISS_SEED_SAMPLE,
                   type=int, help="frames sampled for the k-means++ seeding (faiss, torch, --stream)")
    g.add_argument("--max-points-per-centroid", "--max_points_per_centroid", dest="max_points_per_centroid",
                   default=backends.FAISS_MAX_POINTS_PER_CENTROID, type=int,
                   help="faiss: Lloyd iterations use at most K x this many random frames (torch uses all)")
    g = p.add_argument_group("torch backend")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU; default), cpu, cuda or cuda:N")
    g.add_argument("--chunk-size", "--chunk_size", dest="chunk_size", default=None, type=int,
                   help="frames per distance computation: device memory ~ chunk x (dim + K) floats besides "
                        f"the centroids (default: {backends.TORCH_CHUNK_CPU} on CPU, {backends.TORCH_CHUNK_CUDA} "
                        f"on CUDA)")
    return p


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
