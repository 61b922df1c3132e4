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

Batching does not change the features. The CNN runs one utterance at a time (HuBERT Base's
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
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fairseq_ext.base.atomic import NpyStreamWriter, atomic_output, begin_shard, check_writable_dir
from fairseq_ext.base.bad_audio import BadAudio, skipped_path
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, ManifestEntry, manifest_path, read_audio, read_manifest
from fairseq_ext.base.shards import ShardArg, feat_paths, resolve_shard, shard_arg

logger = logging.getLogger("dump_hubert_feature")

WINDOW_BATCHES = 8
"""Utterances are length-sorted within windows of about this many full batches."""
MIN_FILL = 0.75
"""A batch holds pieces at least this fraction of its longest one (bounds padded compute)."""


class HubertFeatureReader:
    """Batched, padding-exact layer features of a HuBERT-family model.

    Args:
        model: a fairseq ``HubertModel`` (or subclass with the same ``extract_features``).
        layer: 1-based transformer layer.
        normalize: layer-normalise each waveform first (the task's ``normalize``).
        max_chunk: longest piece of waveform encoded at once, in samples.
        sample_rate: the model's sample rate.
    """

    def __init__(self, model: torch.nn.Module, layer: int, normalize: bool = False,
                 max_chunk: int = 1600000, sample_rate: int = 16000):
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.max_chunk = max_chunk
        self.sample_rate = sample_rate
        self.device = next(model.parameters()).device
        extractor = model.feature_extractor
        self._convs = [m for m in extractor.modules() if isinstance(m, torch.nn.Conv1d)]
        norms = [m for m in extractor.modules() if isinstance(
            m, (torch.nn.GroupNorm, torch.nn.BatchNorm1d, torch.nn.InstanceNorm1d))]
        # Frame-local CNN (every norm is a LayerNorm over channels): safe to run on padded audio.
        from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
        self.cnn_batchable = isinstance(extractor, ConvFeatureExtractionModel) and not norms

    @classmethod
    def from_checkpoint(cls, ckpt_path: str, layer: int, max_chunk: int = 1600000,
                        device: str = "cpu", trusted: bool = False) -> "HubertFeatureReader":
        """Load ``ckpt_path`` with :func:`fairseq_ext.load_model`; check ``layer`` (1-based)."""
        from fairseq_ext.checkpoint import CheckpointError, load_model

        if not Path(ckpt_path).is_file():
            raise UserError(f"checkpoint {ckpt_path} does not exist")
        try:
            model, _, task = load_model(ckpt_path, device=device, trusted=trusted)
        except CheckpointError as e:
            raise UserError(str(e)) from None
        if not hasattr(model, "extract_features") or not hasattr(model, "feature_extractor"):
            raise UserError(
                f"{ckpt_path} holds a {type(model).__name__}, not a HuBERT-family model "
                f"(no feature_extractor/extract_features)"
            )
        n_layers = len(model.encoder.layers)
        if not 1 <= layer <= n_layers:
            raise UserError(
                f"layer {layer} is out of range: {ckpt_path} has {n_layers} transformer layers, "
                f"use a layer in 1..{n_layers}"
            )
        cfg = task.cfg
        reader = cls(model, layer, bool(getattr(cfg, "normalize", False)), max_chunk,
                     int(getattr(cfg, "sample_rate", 16000)))
        if reader.conv_frames(max_chunk) < 1:
            raise UserError(f"--max_chunk {max_chunk} is shorter than the CNN's receptive field "
                            f"(no frame fits); use at least a few thousand samples")
        logger.info("%s: %s, layer %d of %d, normalize=%s, CNN batched: %s, device %s",
                    ckpt_path, type(model).__name__, layer, n_layers, reader.normalize,
                    reader.cnn_batchable, device)
        return reader

    # ------------------------------------------------------------------ frame counts

    def conv_frames(self, n_samples: int) -> int:
        """CNN output frames for ``n_samples`` of audio (0 when shorter than the receptive field)."""
        n = n_samples
        for conv in self._convs:
            k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
            n = (n + 2 * p - d * (k - 1) - 1) // s + 1
            if n <= 0:
                return 0
        return n

    def pieces(self, n_samples: int) -> List[Tuple[int, int]]:
        """``(start, end)`` sample ranges encoded separately (fairseq's max_chunk split)."""
        return [(s, min(s + self.max_chunk, n_samples)) for s in range(0, n_samples, self.max_chunk)
                if self.conv_frames(min(s + self.max_chunk, n_samples) - s) > 0]

    def num_frames(self, n_samples: int) -> int:
        """Feature frames of an utterance of ``n_samples`` samples."""
        return sum(self.conv_frames(e - s) for s, e in self.pieces(n_samples))

    # ------------------------------------------------------------------ extraction

    @torch.inference_mode()
    def extract(self, wavs: Sequence[np.ndarray], batch_samples: int = 0) -> List[np.ndarray]:
        """Features of each waveform, shape ``(frames_i, dim)``, computed in padded batches.

        Args:
            wavs: 1-D float waveforms at ``sample_rate``.
            batch_samples: bound on padded samples per forward pass (0: one piece at a time).
        """
        pieces: List[torch.Tensor] = []
        owner: List[int] = []
        for i, wav in enumerate(wavs):
            x = torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self.device)
            if self.normalize:
                x = F.layer_norm(x, x.shape)
            for s, e in self.pieces(len(x)):
                pieces.append(x[s:e])
                owner.append(i)
        out: List[Optional[torch.Tensor]] = [None] * len(pieces)
        for batch in plan_batches([len(p) for p in pieces], batch_samples):
            for j, feat in zip(batch, self._encode([pieces[j] for j in batch])):
                out[j] = feat
        result: List[List[torch.Tensor]] = [[] for _ in wavs]
        for j, i in enumerate(owner):
            result[i].append(out[j])
        dim = self.model.encoder.embedding_dim if not pieces else out[0].size(-1)
        return [torch.cat(r).float().cpu().numpy() if r else np.zeros((0, dim), np.float32)
                for r in result]

    def _encode(self, chunks: List[torch.Tensor]) -> List[torch.Tensor]:
        """Encode 1-D waveforms as one batch; ``(T_i, C)`` per waveform, padding-exact."""
        source = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)  # (B, S)
        if self.cnn_batchable and len(chunks) > 1:
            lens = [self.conv_frames(len(c)) for c in chunks]
            feats = self.model.forward_features(source)[..., : max(lens)]  # (B, C, T)
        else:
            per = [self.model.forward_features(c[None]) for c in chunks]  # (1, C, T_i)
            lens = [f.size(-1) for f in per]
            feats = per[0].new_zeros(len(per), per[0].size(1), max(lens))
            for b, f in enumerate(per):
                feats[b, :, : f.size(-1)] = f[0]
        padding_mask = None
        if len(set(lens)) > 1:
            frame = torch.arange(max(lens), device=feats.device)
            padding_mask = frame[None, :] >= torch.tensor(lens, device=feats.device)[:, None]
        with _cnn_output(self.model, feats) as used:
            x, _ = self.model.extract_features(source=source, padding_mask=padding_mask,
                                               mask=False, output_layer=self.layer)
        if not used:
            raise RuntimeError(f"{type(self.model).__name__}.forward does not call forward_features; "
                               f"batched extraction cannot be used for it")
        return [x[b, :n] for b, n in enumerate(lens)]


@contextlib.contextmanager
def _cnn_output(model: torch.nn.Module, feats: torch.Tensor) -> Iterator[List[bool]]:
    """Make ``model.forward_features`` return ``feats`` (already computed) for one call.

    The model's own ``forward`` then does the rest (feature layer norm, projection, padding
    mask, transformer), so subclasses keep their behaviour. Yields a list that is non-empty
    once the precomputed features were used.
    """
    used: List[bool] = []

    def forward_features(source: torch.Tensor) -> torch.Tensor:
        used.append(True)
        return feats

    model.forward_features = forward_features  # instance attribute shadows the method
    try:
        yield used
    finally:
        del model.forward_features


def plan_batches(lengths: Sequence[int], batch_samples: int, min_fill: float = MIN_FILL) -> List[List[int]]:
    """Group item indices into batches of similar length.

    Items are sorted by decreasing length and packed greedily while ``count * longest`` stays
    within ``batch_samples`` and each item is at least ``min_fill`` times the batch's longest
    (bounding the padding computed); an item longer than the bound forms its own batch.
    ``batch_samples <= 0`` gives one item per batch, in input order.
    """
    if batch_samples <= 0:
        return [[i] for i in range(len(lengths))]
    batches: List[List[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        longest = lengths[batches[-1][0]] if batches else 0
        if (batches and (len(batches[-1]) + 1) * longest <= batch_samples
                and lengths[i] >= min_fill * longest):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _windows(entries: Sequence[ManifestEntry], window_samples: int) -> Iterator[List[ManifestEntry]]:
    """Consecutive runs of entries of about ``window_samples`` samples (at least one entry)."""
    window: List[ManifestEntry] = []
    total = 0
    for e in entries:
        window.append(e)
        total += e.n_samples
        if total >= window_samples:
            yield window
            window, total = [], 0
    if window:
        yield window


def _read_window(manifest: Manifest, window: List[ManifestEntry], sr: int,
                 bad: Optional[BadAudio] = None) -> List[Optional[np.ndarray]]:
    """Waveforms of ``window``; with ``bad``, None for the files it skips (it raises without --skip-bad)."""
    if bad is not None:
        return [bad.read(manifest, e, sr) for e in window]
    return [read_audio(manifest.audio_path(e), expected_sr=sr, expected_len=e.n_samples,
                       where=f"{manifest.path}:{e.line}") for e in window]


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
    nshard, rank = resolve_shard(nshard, rank)
    manifest = read_manifest(manifest_path(tsv_dir, split))
    entries = manifest.shard(nshard, rank)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available; use --device cpu")
    reader = HubertFeatureReader.from_checkpoint(ckpt_path, layer, max_chunk, device, trust_checkpoint)
    check_writable_dir(feat_dir)
    npy_path, len_path = feat_paths(feat_dir, split, rank, nshard)
    report = skipped_path(feat_dir, split, rank, nshard)
    bad = BadAudio(skip_bad, report)
    kept = []
    for e in entries:
        if reader.num_frames(e.n_samples) == 0:
            bad.skip(e, f"{manifest.path}:{e.line}: {e.relpath} has {e.n_samples} samples, too short for "
                        f"one feature frame; remove it from the manifest")
        else:
            kept.append(e)
    begin_shard(len_path, npy_path, report)
    logger.info("shard %d/%d of %s: %d utterances, %.1f s of audio -> %s", rank, nshard,
                manifest.path, len(kept), sum(e.n_samples for e in kept)
                / reader.sample_rate, npy_path)
    dump_entries(reader, manifest, kept, npy_path, len_path, batch_seconds,
                 desc=f"{split} {rank}/{nshard}", bad=bad)
    return npy_path, len_path


def dump_entries(reader: HubertFeatureReader, manifest: Manifest, entries: Sequence[ManifestEntry],
                 npy_path: Path, len_path: Path, batch_seconds: float, desc: str = "",
                 bad: Optional[BadAudio] = None) -> None:
    """Write the features of ``entries`` to ``npy_path`` (rows) and ``len_path`` (frames).

    With ``bad`` (:class:`BadAudio`), unreadable files are handled by it (skipped and reported
    with --skip-bad) and its report is written before ``len_path``, which is renamed last.
    """
    batch_samples = int(batch_seconds * reader.sample_rate)
    windows = list(_windows(entries, max(batch_samples * WINDOW_BATCHES, 1)))
    start, frames = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=1) as pool, atomic_output(len_path) as len_f:
        with NpyStreamWriter(npy_path) as writer:
            nxt = pool.submit(_read_window, manifest, windows[0], reader.sample_rate, bad) if windows else None
            bar = progress(total=len(entries), desc=desc, unit="utt")
            for k in range(len(windows)):
                wavs = [w for w in nxt.result() if w is not None]
                if k + 1 < len(windows):  # read the next window while this one is encoded
                    nxt = pool.submit(_read_window, manifest, windows[k + 1], reader.sample_rate, bad)
                for feat in reader.extract(wavs, batch_samples):
                    writer.append(feat)
                    len_f.write(f"{len(feat)}\n")
                    frames += len(feat)
                bar.update(len(windows[k]))
            bar.close()
        if bad is not None:
            bad.write_report()
    elapsed = time.perf_counter() - start
    seconds = sum(e.n_samples for e in entries) / reader.sample_rate
    logger.info("wrote %d frames x %d dims of %d utterances in %.1f s (%.0fx real time)",
                frames, writer.dim or 0, len(entries), elapsed, seconds / max(elapsed, 1e-9))


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
