"""Usage: python simple_kmeans/dump_hubert_feature.py TSV_DIR SPLIT CKPT_PATH LAYER NSHARD RANK FEAT_DIR
              [--max_chunk 1600000] [--batch-seconds 60] [--device auto|cpu|cuda] [--trust-checkpoint]
              [--skip-bad]

Dump the features of one transformer layer of a HuBERT checkpoint for one shard of a manifest,
to learn k-means labels for the next HuBERT iteration. Same command line and outputs as fairseq's
examples/hubert/simple_kmeans/dump_hubert_feature.py, batched and on the GPU when there is one.

Reads TSV_DIR/SPLIT.tsv (line 1: audio root; then relpath<TAB>n_samples), takes shard RANK of
NSHARD, and writes FEAT_DIR/SPLIT_RANK_NSHARD.npy (float32, (frames, dim), all utterances
concatenated in manifest order) and FEAT_DIR/SPLIT_RANK_NSHARD.len (frames per utterance, one
per line). Both are written under temporary names and renamed when complete, the .len last (a
shard whose .len exists is complete); a rerun deletes the old .len first and redoes the shard.
NSHARD and RANK may be `env` ($SLURM_ARRAY_TASK_COUNT / $SLURM_ARRAY_TASK_ID, else $WORLD_SIZE /
$RANK; see docs/cluster.md). --skip-bad leaves unusable or too short audio files out and lists
them in FEAT_DIR/SPLIT_RANK_NSHARD.skipped.tsv instead of stopping the job.

CKPT_PATH: a fairseq HuBERT checkpoint or a checkpoint of this package's HuBERT-family models
(loaded with fairseq_ext.load_model; the training-time user_dir need not exist). LAYER is
1-based, as in fairseq. Features are ``model.extract_features(wav, padding_mask, mask=False,
output_layer=LAYER)[0]``; the waveform is layer-normalised first when the checkpoint's task
has ``normalize`` set, as in fairseq.

Batching does not change the features (the encoder interface, fairseq_ext/encoder.py; the shard
loop is simple_kmeans/shard_dump.py). The CNN runs one utterance at a time (HuBERT Base's
first conv layer normalises over time, so zero padding would change an utterance's CNN output),
or on the padded batch for models whose CNN is frame-local (extractor_mode=layer_norm). The
transformer then runs on the zero-padded batch with an exact frame-level padding mask. Result:
the same numbers as one utterance at a time, up to float rounding (~1e-6). Utterances are
sorted by length inside windows of consecutive utterances so that little padding is computed;
--batch-seconds bounds the padded audio per batch (0 = one utterance at a time).

Long utterances (--max_chunk, samples): as in fairseq, an utterance longer than max_chunk is
cut into consecutive pieces of max_chunk samples (after normalisation of the whole waveform);
each piece is encoded on its own and the frames are concatenated, so each piece boundary loses
a frame or two exactly as fairseq's script does. A last piece shorter than the CNN's receptive
field (400 samples for HuBERT) yields no frame (fairseq's script crashes there).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, ManifestEntry
from fairseq_ext.base.shards import ShardArg, shard_arg
from fairseq_ext.encoder import ChunkedReader, Upstream, load_upstream
from simple_kmeans.shard_dump import ShardFeature, check_too_short, dump_shard, plan_shard

logger = logging.getLogger("dump_hubert_feature")

WINDOW_BATCHES = 8
"""Utterances are length-sorted within windows of about this many full batches."""


class HubertLayerFeature(ShardFeature):
    """One layer of an upstream (:mod:`fairseq_ext.encoder`) for :func:`simple_kmeans.shard_dump.dump_shard`:
    windows of utterances read one ahead in a thread, encoded in length-sorted padded batches.

    Args:
        upstream: the encoder.
        layer: 1-based transformer layer.
        max_chunk: longest piece of waveform encoded at once, in samples (fairseq's split).
        batch_seconds: padded audio per forward pass (0: one piece at a time).
    """

    name = "hubert"
    read_ahead = True

    def __init__(self, upstream: Upstream, layer: int, max_chunk: int = 1600000, batch_seconds: float = 60.0):
        self.reader = ChunkedReader(upstream, [layer], max_chunk)
        self.layer = layer
        self.sample_rate = upstream.sample_rate
        self.batch_samples = int(batch_seconds * upstream.sample_rate)
        self.window_samples = max(self.batch_samples * WINDOW_BATCHES, 1)

    def too_short(self, manifest: Manifest, entry: ManifestEntry) -> Optional[str]:
        if self.reader.num_frames(entry.n_samples) > 0:
            return None
        return (f"{manifest.path}:{entry.line}: {entry.relpath} has {entry.n_samples} samples, too short for "
                f"one feature frame; remove it from the manifest")

    def extract(self, wavs: List[np.ndarray]) -> List[np.ndarray]:
        return [f[self.layer] for f in self.reader.extract(wavs, self.batch_samples)]


def load_layer_upstream(ckpt_path: str, layer: int, device: str = "cpu", trusted: bool = False) -> Upstream:
    """:func:`fairseq_ext.encoder.load_upstream`, checking that ``layer`` (1-based) is a transformer layer."""
    upstream = load_upstream(ckpt_path, device=device, trusted=trusted)
    if not 1 <= layer <= upstream.num_layers:
        raise UserError(
            f"layer {layer} is out of range: {ckpt_path} has {upstream.num_layers} transformer layers, "
            f"use a layer in 1..{upstream.num_layers}"
        )
    return upstream


def main(
    tsv_dir: str,
    split: str,
    ckpt_path: str,
    layer: int,
    nshard: ShardArg,
    rank: ShardArg,
    feat_dir: str,
    max_chunk: int = 1600000,
    batch_seconds: float = 60.0,
    device: str = "auto",
    trust_checkpoint: bool = False,
    skip_bad: bool = False,
) -> Tuple[Path, Path]:
    """Dump layer ``layer`` features of shard ``rank``/``nshard``; return ``(.npy, .len)`` paths.

    ``nshard`` / ``rank`` may be ``"env"`` (:func:`fairseq_ext.base.shards.resolve_shard`).
    """
    job = plan_shard(tsv_dir, split, nshard, rank, feat_dir, skip_bad)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available; use --device cpu")
    upstream = load_layer_upstream(ckpt_path, layer, device, trust_checkpoint)
    feature = HubertLayerFeature(upstream, layer, max_chunk, batch_seconds)
    logger.info("%s: %s, layer %d of %d, normalize=%s, CNN batched: %s, device %s",
                ckpt_path, type(upstream.model).__name__, layer, upstream.num_layers, upstream.normalize,
                getattr(upstream, "cnn_batchable", False), device)
    too_short = check_too_short(job, feature)
    job.begin()
    kept = [e for e in job.entries if e not in too_short]
    logger.info("shard %d/%d of %s: %d utterances, %.1f s of audio -> %s", job.rank, job.nshard,
                job.manifest.path, len(kept), sum(e.n_samples for e in kept) / upstream.sample_rate, job.npy_path)
    stats = dump_shard(job, feature, too_short, desc=job.desc)
    seconds = stats.samples / upstream.sample_rate
    logger.info("wrote %d frames x %d dims of %d utterances in %.1f s (%.0fx real time)",
                stats.frames, stats.dim, stats.utterances, stats.seconds, seconds / max(stats.seconds, 1e-9))
    return job.npy_path, job.len_path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv_dir", help="folder with {split}.tsv")
    parser.add_argument("split", help="manifest name without .tsv, e.g. train")
    parser.add_argument("ckpt_path", help="HuBERT checkpoint (fairseq or fairseq-ext)")
    parser.add_argument("layer", type=int, help="1-based transformer layer")
    parser.add_argument("nshard", type=shard_arg,
                        help="number of shards, or 'env' ($SLURM_ARRAY_TASK_COUNT, else $WORLD_SIZE)")
    parser.add_argument("rank", type=shard_arg,
                        help="shard to process, 0..nshard-1, or 'env' ($SLURM_ARRAY_TASK_ID, else $RANK)")
    parser.add_argument("feat_dir", help="output folder")
    parser.add_argument("--max_chunk", type=int, default=1600000,
                        help="longest piece of waveform encoded at once, in samples (fairseq's)")
    parser.add_argument("--batch-seconds", type=float, default=60.0,
                        help="padded audio per forward pass, seconds (0: one utterance at a time)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle everything in the checkpoint (only for trusted files)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unusable audio files (listed in SPLIT_RANK_NSHARD.skipped.tsv) "
                             "instead of failing")
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
