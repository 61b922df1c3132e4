"""PASE target normalisation statistics: compute them once over training chunks, load them into the workers.

    from fairseq_ext.pase_stats import compute_target_stats
    stats = compute_target_stats("manifests", "stats/pase.json", "config/pretrain/pase.yaml")

``scripts/pase_stats.py`` is the command line of :func:`compute_target_stats`; the ``pase`` model
reads the file (``model.target_stats``) with :func:`load_target_stats`. The file holds, per
regression worker with normalised targets, the per-dimension mean and standard deviation over
the valid frames of random training chunks, and the options that shape the worker's target
(its ``target_signature``): a file computed with other options is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError
from fairseq_ext.data.pase_dataset import PaseChunkDataset
from fairseq_ext.modules.pase_workers import build_worker, import_worker_file
from fairseq_ext.modules.pase_workers.base import PaseBatch, PaseWorker, RegressorWorker

logger = logging.getLogger("pase_stats")

STATS_VERSION = 1
"""Version of the statistics file layout."""

DEFAULT_STRIDES = [10, 2, 1, 2, 1, 2, 2]
"""``model.conv_strides`` of PASE when the config does not set it (product 160: the frame hop)."""


def load_training_config(config: str, overrides: Optional[List[str]] = None):
    """The training YAML with hydra command-line overrides applied (``key=value``, ``+key=value``,
    ``~key``, hydra's value grammar, e.g. ``+model.workers.fbank={n_mels:80}``); an OmegaConf ``DictConfig``.

    Raises:
        UserError: the file is missing, has a hydra defaults list, or an override does not parse.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not os.path.isfile(config):
        raise UserError(f"config {config} does not exist")
    cfg = OmegaConf.load(config)
    if "defaults" in cfg:
        raise UserError(f"{config} has a hydra defaults list; give a self-contained config (like "
                        f"config/pretrain/pase.yaml) or pass the keys it inherits with --set")
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides or []))
    except Exception as e:  # hydra raises OverrideParseException and friends
        raise UserError(f"bad --set override: {e}") from None
    for o in parsed:
        key = o.key_or_group
        if o.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                node.pop(leaf)
        else:
            OmegaConf.update(cfg, key, o.value(), merge=False, force_add=True)
    return cfg


def compute_target_stats(manifest_dir: str, out_json: str, config: str, split: str = "train",
                         max_chunks: int = 5000, batch_size: int = 16, seed: int = 0,
                         overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Compute the statistics and write ``out_json`` (atomically); returns what was written.

    The workers, their options, the chunk size and the sample rate come from the training
    ``config`` (with ``overrides`` applied as by :func:`load_training_config`). One random chunk is
    taken from each of at most ``max_chunks`` utterances of ``manifest_dir/split.tsv`` (``seed``
    picks the utterances and the chunk offsets); padding frames are excluded.

    Returns:
        ``{"version", "config", "manifest", "chunk_size", "sample_rate", "chunks", "workers": {name:
        {"signature", "dim", "frames", "mean": [dim], "std": [dim]}}}``.
    Raises:
        UserError: a bad config, no worker with normalised targets, no valid frame, non-finite statistics.
    """
    from omegaconf import OmegaConf

    cfg = load_training_config(config, overrides)
    model = cfg.get("model") or {}
    task = cfg.get("task") or {}
    for path in model.get("worker_files") or []:
        import_worker_file(path)
    sample_rate = int(task.get("sample_rate", 16000))
    chunk_size = int(task.get("chunk_size", 16000))
    hop = math.prod(list(model.get("conv_strides") or DEFAULT_STRIDES))
    emb_dim = int(model.get("emb_dim", 100))
    entries = OmegaConf.to_container(model.get("workers") or OmegaConf.create({}), resolve=True)
    try:
        workers = {name: build_worker(name, entry, emb_dim=emb_dim, sample_rate=sample_rate, hop=hop)
                   for name, entry in entries.items() if entry is not None}
    except ValueError as e:
        raise UserError(f"{config}: {e}") from None
    regressors = {n: w for n, w in workers.items() if isinstance(w, RegressorWorker) and w.normalise_target}
    if not regressors:
        raise UserError(f"{config}: model.workers has no worker with normalised targets")

    dataset = PaseChunkDataset(
        os.path.join(manifest_dir, f"{split}.tsv"), sample_rate=sample_rate, chunk_size=chunk_size,
        short_utterances=str(task.get("short_utterances", "pad")),
        min_sample_size=int(task.get("min_sample_size", 1600)), contrastive=False, seed=seed,
        random_per_epoch=False)
    rng = np.random.default_rng(seed)
    indices = np.arange(len(dataset))
    if len(indices) > max_chunks:
        indices = np.sort(rng.choice(indices, size=max_chunks, replace=False))
    sums = {n: torch.zeros(w.target_dim, dtype=torch.float64) for n, w in regressors.items()}
    sqs = {n: torch.zeros(w.target_dim, dtype=torch.float64) for n, w in regressors.items()}
    frames = 0
    with torch.no_grad():
        for start in progress(range(0, len(indices), batch_size), desc="target statistics", unit="batch"):
            sample = dataset.collater([dataset[int(i)] for i in indices[start:start + batch_size]])
            wav = sample["net_input"]["source"]
            mask = sample["net_input"].get("padding_mask")
            lengths = torch.full((wav.size(0),), wav.size(1)) if mask is None else (~mask).sum(1)
            n_frames = wav.size(1) // hop
            batch = PaseBatch(wav=wav, wav_lengths=lengths, emb=wav.new_zeros(wav.size(0), 0, n_frames),
                              frame_lengths=lengths // hop, hop=hop, sample_rate=sample_rate)
            valid = batch.frame_mask()
            frames += int(valid.sum())
            for name, worker in regressors.items():
                target = worker.compute_raw_target(batch)[valid].double()
                sums[name] += target.sum(0)
                sqs[name] += (target ** 2).sum(0)
    if frames == 0:
        raise UserError(f"{manifest_dir}/{split}.tsv: no valid frames to compute statistics on")
    out: Dict[str, Any] = {"version": STATS_VERSION, "config": os.path.abspath(config),
                           "manifest": os.path.abspath(os.path.join(manifest_dir, f"{split}.tsv")),
                           "chunk_size": chunk_size, "sample_rate": sample_rate, "chunks": int(len(indices)),
                           "workers": {}}
    for name, worker in regressors.items():
        mean = sums[name] / frames
        std = (sqs[name] / frames - mean ** 2).clamp(min=0).sqrt()
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise UserError(f"worker {name}: non-finite target statistics; check the audio for NaN/Inf")
        out["workers"][name] = {"signature": worker.target_signature(), "dim": worker.target_dim,
                                "frames": frames, "mean": mean.tolist(), "std": std.tolist()}
    with atomic_output(out_json) as f:
        json.dump(out, f)
    logger.info("statistics of %s over %d chunks (%d frames) written to %s",
                ", ".join(regressors), len(indices), frames, out_json)
    return out


def load_target_stats(path: str, workers: Dict[str, PaseWorker]) -> None:
    """Copy the statistics in ``path`` (written by :func:`compute_target_stats`) into the regressors
    of ``workers`` that normalise their targets.

    Raises:
        UserError: the file is missing, of another version, lacks a worker, or was computed with
            other target options than the worker's.
    """
    if not os.path.isfile(path):
        raise UserError(f"target statistics file {path} (model.target_stats) does not exist: compute it "
                        f"with `python scripts/pase_stats.py MANIFEST_DIR {path} --config <your config>`")
    with open(path, encoding="utf-8") as f:
        stats = json.load(f)
    if stats.get("version") != STATS_VERSION:
        raise UserError(f"{path}: unsupported statistics version {stats.get('version')}; recompute it")
    for name, worker in workers.items():
        if not (isinstance(worker, RegressorWorker) and worker.normalise_target):
            continue
        entry = stats["workers"].get(name)
        if entry is None:
            raise UserError(f"{path} has no statistics for worker {name!r} (it has: "
                            f"{', '.join(sorted(stats['workers'])) or 'none'}); recompute it with this config")
        sig = json.loads(json.dumps(worker.target_signature()))
        if entry["signature"] != sig:
            raise UserError(f"{path}: statistics of worker {name!r} were computed with {entry['signature']}, "
                            f"the config has {sig}; recompute them with scripts/pase_stats.py")
        worker.set_target_stats(torch.tensor(entry["mean"]), torch.tensor(entry["std"]), entry["frames"])
    logger.info("target normalisation statistics loaded from %s", path)
