"""Usage: dump_pitch_feature.py tsv_dir split nshard rank feat_dir [--frame-rate 100|50]
                                  [--f0-floor 60] [--f0-ceil 400] [--method dio|harvest] [--skip-bad]

Dump frame-level pitch features (log F0, voicing) of one shard of a manifest, on the frame
grid of HuBERT's labels, for the disentangled-HuBERT pitch targets.

Reads ``{tsv_dir}/{split}.tsv`` (16 kHz mono audio) and writes into ``feat_dir``:
  {split}_{rank}_{nshard}.npy              float32 (frames, 2): [log F0, voiced]
  {split}_{rank}_{nshard}.len              frames per utterance, one per line
  {split}_{rank}_{nshard}.pitch_stats.json partial sums over voiced frames, merged into
                                           {split}.pitch_stats.json by pitch_stats.py

Column 0 is the natural log of F0 in Hz. Over unvoiced frames it is interpolated linearly
between the neighbouring voiced frames; before the first and after the last voiced frame it
holds the nearest voiced value; an utterance without any voiced frame gets
log(sqrt(f0_floor * f0_ceil)) everywhere (log 155 Hz with the defaults). Column 1 is 1.0 on
voiced frames, 0.0 elsewhere. Statistics only use voiced frames.

Outputs are written under temporary names and renamed when complete, the .len last: a shard
whose .len exists is complete; a rerun deletes the old .len first and redoes the shard.
nshard and rank may be `env` ($SLURM_ARRAY_TASK_COUNT / $SLURM_ARRAY_TASK_ID, else $WORLD_SIZE /
$RANK; see docs/cluster.md). With --skip-bad, unreadable or mismatching audio files are left out
and listed in {split}_{rank}_{nshard}.skipped.tsv instead of stopping the job.

Frame grids (16 kHz, n samples); the default, 100, is the ``pitch_rate`` of the shipped dhubert
configs (config/pretrain/dhubert_*.yaml) and of the demo; use 50 with ``task.pitch_rate=50``:
  --frame-rate 100: the MFCC grid (kaldi, 25 ms window, 10 ms shift, snip_edges):
                    1 + (n - 400) // 160 frames (0 when n < 400), frame k centred on
                    sample 160 k + 200.
  --frame-rate 50:  the output of HuBERT's convolutional feature encoder
                    [(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2 (no padding), computed
                    layer by layer as L <- (L - kernel) // stride + 1; receptive field 400
                    samples, stride 320, frame k centred on sample 320 k + 200.
F0 is estimated with WORLD (pyworld) every 2.5 ms and read at each frame's centre, which
falls exactly on that analysis grid for both rates. ``dio`` (DIO + StoneMask refinement) is
the default: about 20x faster than ``harvest`` and, on the demo corpus, more accurate in its
voiced/unvoiced decisions (harvest over-extends voicing).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import List, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.frames import FRAME_RATES, frame_centres, frames_at_rate
from fairseq_ext.base.shards import ShardArg, shard_arg, shard_stem
from simple_kmeans.shard_dump import ShardFeature, dump_shard, plan_shard

logger = logging.getLogger("dump_pitch_feature")

SAMPLE_RATE = 16000
METHODS = ("dio", "harvest")
ANALYSIS_HOP = 40  # WORLD analysis period in samples (2.5 ms at 16 kHz)
DEFAULT_FRAME_RATE = 100  # the pitch_rate of the shipped dhubert configs and of the demo


# --------------------------------------------------------------------------- pitch


def default_log_f0(f0_floor: float, f0_ceil: float) -> float:
    """Log F0 written for utterances without voiced frames: log of the geometric mid-range."""
    return 0.5 * (math.log(f0_floor) + math.log(f0_ceil))


def interpolate_log_f0(f0: np.ndarray, fill: float) -> np.ndarray:
    """Turn an F0 track (Hz, 0 = unvoiced) of shape ``(T,)`` into ``(T, 2)`` [log F0, voiced].

    Unvoiced frames get log F0 interpolated linearly between voiced neighbours, the nearest
    voiced value at the edges, and ``fill`` when the track has no voiced frame.
    """
    f0 = np.asarray(f0, dtype=np.float64)
    voiced = f0 > 0
    out = np.empty((len(f0), 2), dtype=np.float32)
    out[:, 1] = voiced
    if voiced.any():
        idx = np.flatnonzero(voiced)
        out[:, 0] = np.interp(np.arange(len(f0)), idx, np.log(f0[idx]))
    else:
        out[:, 0] = fill
    return out


class PitchExtractor:
    """F0 on a label frame grid with WORLD (dio + stonemask, or harvest).

    Args:
        frame_rate: 50 (HuBERT CNN grid) or 100 (MFCC grid).
        f0_floor, f0_ceil: search range in Hz.
        method: ``"dio"`` or ``"harvest"``.
    """

    def __init__(self, frame_rate: int = DEFAULT_FRAME_RATE, f0_floor: float = 60.0, f0_ceil: float = 400.0,
                 method: str = "dio", sample_rate: int = SAMPLE_RATE):
        if frame_rate not in FRAME_RATES:
            raise UserError(f"--frame-rate must be one of {FRAME_RATES}, got {frame_rate}")
        if method not in METHODS:
            raise UserError(f"--method must be one of {METHODS}, got {method!r}")
        if not 0 < f0_floor < f0_ceil < sample_rate / 2:
            raise UserError(
                f"need 0 < --f0-floor < --f0-ceil < {sample_rate / 2:g} Hz, got {f0_floor:g} and {f0_ceil:g}"
            )
        self.frame_rate = frame_rate
        self.f0_floor = float(f0_floor)
        self.f0_ceil = float(f0_ceil)
        self.method = method
        self.sample_rate = sample_rate
        self.fill = default_log_f0(self.f0_floor, self.f0_ceil)
        try:  # imported here: --help and pitch_stats need no pyworld
            import pyworld
        except ImportError as e:
            raise UserError(f"pyworld cannot be imported ({e}): pip install -r requirements.txt "
                            f"(pyworld 0.3.5 needs setuptools<81 for pkg_resources)") from None
        self._pw = pyworld

    def f0(self, wav: np.ndarray) -> np.ndarray:
        """F0 in Hz (0 = unvoiced) at each frame centre; ``wav`` ``(N,)`` -> ``(T,)``."""
        n = frames_at_rate(len(wav), self.frame_rate)
        if n == 0:
            return np.zeros(0)
        x = np.ascontiguousarray(wav, dtype=np.float64)
        period_ms = 1000.0 * ANALYSIS_HOP / self.sample_rate
        kwargs = dict(f0_floor=self.f0_floor, f0_ceil=self.f0_ceil, frame_period=period_ms)
        if self.method == "dio":
            f0, t = self._pw.dio(x, self.sample_rate, **kwargs)
            f0 = self._pw.stonemask(x, f0, t, self.sample_rate)
        else:
            f0, _ = self._pw.harvest(x, self.sample_rate, **kwargs)
        idx = np.minimum(frame_centres(n, self.frame_rate) // ANALYSIS_HOP, len(f0) - 1)
        f0 = f0[idx]
        return np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """``wav`` ``(N,)`` float in [-1, 1] -> float32 ``(T, 2)`` [log F0, voiced]."""
        return interpolate_log_f0(self.f0(wav), self.fill)


def voiced_moments(feats: np.ndarray) -> Tuple[int, float, float]:
    """``(n, mean, M2)`` of log F0 over the voiced frames of a ``(T, 2)`` pitch array."""
    values = feats[feats[:, 1] > 0.5, 0].astype(np.float64)
    if len(values) == 0:
        return 0, 0.0, 0.0
    mean = float(values.mean())
    return len(values), mean, float(((values - mean) ** 2).sum())


def stats_path(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """``{feat_dir}/{split}_{rank}_{nshard}.pitch_stats.json``."""
    stem = shard_stem(feat_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".pitch_stats.json")


class PitchFeature(ShardFeature):
    """Pitch per utterance for :func:`simple_kmeans.shard_dump.dump_shard`; keeps the voiced-frame moments
    and writes them to the shard's ``.pitch_stats.json`` (:meth:`finish`)."""

    name = "pitch"
    dim = 2
    sample_rate = SAMPLE_RATE

    def __init__(self, extractor: PitchExtractor, stats: Path, header: dict):
        self.extractor, self.stats, self.header = extractor, stats, header
        self.lengths: List[int] = []
        self.moments: List[List[float]] = []

    def extract(self, wavs: List[np.ndarray]) -> List[np.ndarray]:
        out = [self.extractor(wav) for wav in wavs]
        for feats in out:
            self.lengths.append(len(feats))
            self.moments.append(list(voiced_moments(feats)))
        return out

    def finish(self) -> None:
        partial = {
            **self.header, "n_utterances": len(self.lengths), "n_frames": int(sum(self.lengths)),
            "utterances": self.moments,  # per kept manifest line: [voiced frames, mean log F0, sum of squared deviations]
        }
        with atomic_output(self.stats) as f:
            json.dump(partial, f)


# --------------------------------------------------------------------------- main


def main(tsv_dir: str, split: str, nshard: ShardArg, rank: ShardArg, feat_dir: str,
         frame_rate: int = DEFAULT_FRAME_RATE, f0_floor: float = 60.0, f0_ceil: float = 400.0,
         method: str = "dio", skip_bad: bool = False) -> Path:
    """Dump one shard (see the module docstring); returns the ``.npy`` path.

    ``nshard`` / ``rank`` may be ``"env"`` (:func:`fairseq_ext.base.shards.resolve_shard`).
    """
    extractor = PitchExtractor(frame_rate, f0_floor, f0_ceil, method)
    job = plan_shard(tsv_dir, split, nshard, rank, feat_dir, skip_bad)
    stats = stats_path(feat_dir, split, job.rank, job.nshard)
    job.extra_outputs.append(stats)
    job.begin()
    header = {"split": split, "rank": job.rank, "nshard": job.nshard, "frame_rate": frame_rate, "method": method,
              "f0_floor": extractor.f0_floor, "f0_ceil": extractor.f0_ceil}
    feature = PitchFeature(extractor, stats, header)
    done = dump_shard(job, feature)
    n_voiced = sum(int(m[0]) for m in feature.moments)
    audio_s = done.samples / SAMPLE_RATE
    logger.info("wrote %s: %d utterances, %d frames (%.1f%% voiced) at %d Hz, %.1f s of audio in %.1f s "
                "(%.0fx real time)", job.npy_path, done.utterances, done.frames,
                100.0 * n_voiced / max(done.frames, 1), frame_rate, audio_s, done.seconds,
                audio_s / max(done.seconds, 1e-9))
    return job.npy_path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv_dir", help="folder holding {split}.tsv")
    parser.add_argument("split", help="manifest name without .tsv (train, valid, ...)")
    parser.add_argument("nshard", type=shard_arg,
                        help="number of shards, or 'env' ($SLURM_ARRAY_TASK_COUNT, else $WORLD_SIZE)")
    parser.add_argument("rank", type=shard_arg,
                        help="shard to process, 0 <= rank < nshard, or 'env' ($SLURM_ARRAY_TASK_ID, else $RANK)")
    parser.add_argument("feat_dir", help="output folder")
    parser.add_argument("--frame-rate", type=int, default=DEFAULT_FRAME_RATE, choices=FRAME_RATES,
                        help="pitch frame rate: 100 = MFCC frames (default: the dhubert configs' pitch_rate), "
                             "50 = HuBERT CNN frames (then set task.pitch_rate=50)")
    parser.add_argument("--f0-floor", type=float, default=60.0, help="lowest F0 searched, Hz (default 60)")
    parser.add_argument("--f0-ceil", type=float, default=400.0, help="highest F0 searched, Hz (default 400)")
    parser.add_argument("--method", default="dio", choices=METHODS,
                        help="WORLD F0 estimator: dio (+stonemask, fast, default) or harvest (slow)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unusable audio files (listed in {split}_{rank}_{nshard}.skipped.tsv) "
                             "instead of failing")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
