"""Usage: python scripts/pase_stats.py MANIFEST_DIR OUT_JSON --config config/pretrain/pase.yaml
              [--split train] [--max-chunks 5000] [--batch-size 16] [--seed 0]
              [--set model.workers.lps.n_fft=512 ...]

Compute, once, the per-dimension mean and standard deviation of every PASE regression
worker's target over random training chunks, for ``model.target_stats=OUT_JSON``.

The workers, their options, the chunk size and the sample rate come from the training config
(the same YAML given to fairseq-hydra-train; --set applies the same dotted overrides you pass to
training, e.g. '--set model.workers.fbank={}'). One random chunk is taken from each of at most
--max-chunks utterances of MANIFEST_DIR/SPLIT.tsv; statistics are computed over the valid
frames (padding excluded). Each worker's entry records the options that shape its target:
training refuses a statistics file whose options differ from its config. The output is written
to a temporary name and renamed when complete; rerunning overwrites it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fairseq_ext.base.atomic import atomic_output  # noqa: E402
from fairseq_ext.base.cli import progress, run_cli  # noqa: E402
from fairseq_ext.base.errors import UserError  # noqa: E402

logger = logging.getLogger("pase_stats")

DEFAULT_STRIDES = [10, 2, 1, 2, 1, 2, 2]


def load_config(config: str, overrides: Optional[List[str]] = None):
    """The training YAML with hydra command-line overrides applied (``key=value``, ``+key=value``,
    ``~key``, hydra's value grammar, e.g. ``+model.workers.fbank={n_mels:80}``)."""
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


def main(manifest_dir: str, out_json: str, config: str, split: str = "train", max_chunks: int = 5000,
         batch_size: int = 16, seed: int = 0, overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Compute the statistics and write ``out_json``; returns what was written."""
    from omegaconf import OmegaConf

    from fairseq_ext.data.pase_dataset import PaseChunkDataset
    from fairseq_ext.modules.pase_workers import PaseBatch, RegressorWorker, build_worker, import_worker_file

    cfg = load_config(config, overrides)
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
    out: Dict[str, Any] = {"version": 1, "config": os.path.abspath(config),
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
    for name in regressors:
        w = out["workers"][name]
        print(f"{name}\tdim={w['dim']}\tmean(mean)={np.mean(w['mean']):.3f}\tmean(std)={np.mean(w['std']):.3f}")
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir", help="folder with SPLIT.tsv")
    parser.add_argument("out_json", help="output statistics file (model.target_stats)")
    parser.add_argument("--config", required=True, help="training config YAML (e.g. config/pretrain/pase.yaml)")
    parser.add_argument("--split", default="train", help="manifest split (default: train)")
    parser.add_argument("--max-chunks", type=int, default=5000, help="utterances sampled, one chunk each")
    parser.add_argument("--batch-size", type=int, default=16, help="chunks per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the utterance sample and chunk offsets")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help="dotted config override, as given to training (repeatable)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
