"""Usage: python simple_kmeans/dump_km_label.py FEAT_DIR SPLIT KM_PATH NSHARD RANK LAB_DIR
           [--batch-frames N] [--device auto|cpu|cuda]

NSHARD / RANK may be ``env``: read from a SLURM array or torchrun's environment (docs/cluster.md).

Assign every frame of feature shard ``{SPLIT}_{RANK}_{NSHARD}.npy/.len`` to its nearest k-means
centroid and write ``LAB_DIR/{SPLIT}_{RANK}_{NSHARD}.km``: one line per utterance, its frame labels
as space-separated integers (fairseq's examples/hubert/simple_kmeans/dump_km_label.py format and
command line).

KM_PATH is any joblib k-means model with ``cluster_centers_`` (ours or fairseq's learn_kmeans).
The shard is memory-mapped and processed in chunks of --batch-frames frames (torch, on the GPU when
there is one): distance = |x|^2 - 2 x C^T + |C|^2, argmin over centroids, computed in float32 in
fairseq's order. On the CPU the labels equal fairseq's ApplyKmeans (numpy) bit for bit in practice;
on a GPU they may differ where two centroids are tied within float32 rounding (either is then
equally near; fairseq's own CPU and GPU paths differ there too). The output is written to a
temporary name and renamed when complete.

A feature shard dumped with --skip-bad holds only the files it kept: the .km shard has one line
per kept file (the log says how many were left out and where they are listed); merge the shards
with ``fairseq-ext-merge-labels ... --feat-dir FEAT_DIR --kept-manifest-dir DIR`` to get the
manifest that matches them.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Iterator, Optional, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output, check_writable_dir
from fairseq_ext.base.bad_audio import read_skipped, skipped_path
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import ShardArg, feat_paths, label_path, load_feat_shard, resolve_shard, shard_arg
from fairseq_ext.kmeans.backends import load_centers

logger = logging.getLogger("dump_km_label")

CHUNK_BYTES = 256 * 2**20  # default chunk: ~256 MiB of frames plus their distance matrix


class NearestCentroid:
    """Batched nearest-centroid assignment: argmin over k of |x|^2 - 2 x.c_k + |c_k|^2.

    On the CPU the matrix product is numpy's (the BLAS fairseq's ApplyKmeans uses, which rounds
    each product the same whatever the number of rows) and the element-wise part and argmin run
    in torch threads on the same buffer; every term is computed in fairseq's order and precision,
    so the labels equal fairseq's bit for bit in practice. On CUDA everything runs in torch (like
    fairseq's ApplyKmeans given torch tensors): near-ties may then break differently.

    Args:
        centers: (K, C) cluster centers.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (cuda when available).
    """

    def __init__(self, centers: np.ndarray, device: str = "auto"):
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        self.device = torch.device(device)
        # numpy's type promotion, as in fairseq (float32 features and float32 centers -> float32)
        self.dtype = np.result_type(np.float32, centers.dtype)
        self.c_t = np.asarray(centers).astype(self.dtype, copy=False).T  # (C, K) view, as fairseq's
        # |C|^2 and |x|^2 are summed by numpy exactly as fairseq's ApplyKmeans does
        self.center_norms = torch.from_numpy((self.c_t ** 2).sum(0, keepdims=True)).to(self.device)  # (1, K)
        self.centers_t = torch.from_numpy(np.ascontiguousarray(self.c_t)).to(self.device)
        self.n_clusters, self.dim = centers.shape

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """Labels (N,) int64 of frames ``feats`` (N, C)."""
        import torch

        x = np.array(feats, dtype=self.dtype, order="C")  # reads the chunk from the memmap
        x_norms = torch.from_numpy((x ** 2).sum(1, keepdims=True)).to(self.device)  # (N, 1)
        if self.device.type == "cpu":
            dist = torch.from_numpy(np.matmul(x, self.c_t))  # (N, K)
        else:
            dist = torch.matmul(torch.from_numpy(x).to(self.device), self.centers_t)
        # fairseq: (|x|^2 - 2 xC) + |C|^2; -2 xC is exact and IEEE addition commutes
        dist.mul_(-2).add_(x_norms).add_(self.center_norms)
        return dist.argmin(dim=1).cpu().numpy()


def default_batch_frames(dim: int, n_clusters: int) -> int:
    """Frames per chunk so that the chunk and its (N, K) distances take about :data:`CHUNK_BYTES`."""
    return max(1024, CHUNK_BYTES // (4 * (dim + n_clusters)))


def utterance_chunks(lengths: np.ndarray, batch_frames: int) -> Iterator[Tuple[int, int, int, int]]:
    """Split utterances into consecutive groups of about ``batch_frames`` frames.

    Yields ``(first_utt, end_utt, first_frame, end_frame)``; an utterance is never split across
    groups (a longer one is a group of its own).
    """
    ends = np.cumsum(lengths)
    u, frame = 0, 0
    n = len(lengths)
    while u < n:
        v = int(np.searchsorted(ends, frame + batch_frames, side="right"))
        v = max(v, u + 1)
        end_frame = int(ends[v - 1])
        yield u, v, frame, end_frame
        u, frame = v, end_frame


def format_labels(labels: np.ndarray, lengths: np.ndarray) -> str:
    """One line of space-separated labels per utterance."""
    out = []
    pos = 0
    for n in lengths.tolist():
        out.append(" ".join(map(str, labels[pos:pos + n].tolist())) + "\n")
        pos += n
    return "".join(out)


def main(feat_dir: str, split: str, km_path: str, nshard: ShardArg, rank: ShardArg, lab_dir: str,
         batch_frames: Optional[int] = None, device: str = "auto") -> str:
    """Write ``{lab_dir}/{split}_{rank}_{nshard}.km``; returns its path.

    ``nshard`` / ``rank`` may be ``"env"`` (:func:`fairseq_ext.base.shards.resolve_shard`).
    """
    nshard, rank = resolve_shard(nshard, rank)
    feats, lengths = load_feat_shard(feat_dir, split, rank, nshard)
    npy = feat_paths(feat_dir, split, rank, nshard)[0]
    centers = load_centers(km_path)
    if centers.shape[1] != feats.shape[1]:
        raise UserError(
            f"{km_path} has {centers.shape[1]}-dim centroids but {npy} has {feats.shape[1]}-dim "
            f"features: use the k-means model trained on these features"
        )
    assign = NearestCentroid(centers, device)
    if batch_frames is None:
        batch_frames = default_batch_frames(feats.shape[1], len(centers))
    if batch_frames < 1:
        raise UserError(f"--batch-frames must be >= 1, got {batch_frames}")
    out_path = label_path(check_writable_dir(lab_dir), split, rank, nshard)
    logger.info("labelling %d utterances, %d frames of %s with K=%d on %s", len(lengths), len(feats),
                npy, len(centers), assign.device)
    report = skipped_path(feat_dir, split, rank, nshard)
    n_skipped = len(read_skipped(report))
    if n_skipped:
        logger.warning("the feature shard left out %d bad file(s) of its manifest part (listed in %s): the "
                       "%d lines of the labels follow the kept files; train on the kept-files manifest "
                       "(merge_labels --kept-manifest-dir)", n_skipped, report, len(lengths))
    start = time.perf_counter()
    with atomic_output(out_path) as f:
        chunks = list(utterance_chunks(lengths, batch_frames))
        for u, v, a, b in progress(chunks, desc="label", unit="chunk"):
            labels = np.concatenate([assign(feats[s:min(s + batch_frames, b)])
                                     for s in range(a, b, batch_frames)]) if b > a else np.zeros(0, int)
            f.write(format_labels(labels, lengths[u:v]))
    logger.info("wrote %s in %.1f s; finished successfully", out_path, time.perf_counter() - start)
    return str(out_path)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("feat_dir", help="folder with {split}_{rank}_{nshard}.npy/.len")
    p.add_argument("split")
    p.add_argument("km_path", help="joblib k-means model (learn_kmeans.py)")
    p.add_argument("nshard", type=shard_arg,
                   help="number of shards, or 'env' ($SLURM_ARRAY_TASK_COUNT, else $WORLD_SIZE)")
    p.add_argument("rank", type=shard_arg,
                   help="shard to label, 0 <= RANK < NSHARD, or 'env' ($SLURM_ARRAY_TASK_ID, else $RANK)")
    p.add_argument("lab_dir", help="output folder for {split}_{rank}_{nshard}.km")
    p.add_argument("--batch-frames", "--batch_frames", dest="batch_frames", type=int, default=None,
                   help="frames per chunk (default: about 256 MiB of frames and distances)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
