"""The shard-dump loop shared by the feature dumpers (MFCC, HuBERT layer features, pitch).

Each dumper describes its feature kind with a :class:`ShardFeature` (dimension, frame count,
extraction, batching); :func:`dump_shard` does the rest, the same way for all of them:

1. files too short for one frame (``ShardFeature.too_short`` gives the problem) are refused up
   front, or, with --skip-bad, left out and reported;
2. audio is read (``BadAudio.read``: unusable files raise, or with --skip-bad are skipped), in
   windows of consecutive utterances, optionally one window ahead in a thread;
3. features are appended to the ``.npy`` stream (:class:`NpyStreamWriter`) and their frame counts
   to the ``.len`` file; commit order: ``.npy``, then the kind's extra outputs
   (``ShardFeature.finish``), then the skipped report, then ``.len`` (renamed last: a shard
   whose ``.len`` exists is complete).

Like fairseq's ``feature_utils.dump_feature`` with its readers, in this package's shard protocol.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

from fairseq_ext.base.atomic import NpyStreamWriter, atomic_output, begin_shard, check_writable_dir
from fairseq_ext.base.bad_audio import BadAudio, skipped_path
from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, ManifestEntry, manifest_path, read_manifest
from fairseq_ext.base.shards import ShardArg, feat_paths, resolve_shard

logger = logging.getLogger(__name__)


class ShardFeature:
    """What one feature kind supplies to :func:`dump_shard`; subclasses override what differs.

    Attributes:
        name: short name for the progress bar (``"mfcc"``).
        dim: feature dimension, or None to take it from the first utterance.
        sample_rate: expected audio sample rate.
        window_samples: audio read and extracted together (0: one utterance at a time).
        read_ahead: read the next window in a thread while this one is extracted.
    """

    name: str = "features"
    dim: Optional[int] = None
    sample_rate: int = 16000
    window_samples: int = 0
    read_ahead: bool = False

    def too_short(self, manifest: Manifest, entry: ManifestEntry) -> Optional[str]:
        """The problem when ``entry`` is too short for one frame (it is left out), else None."""
        return None

    def refuse_too_short(self, manifest: Manifest, entries: List[ManifestEntry], bad: BadAudio) -> None:
        """Without --skip-bad: raise for the too-short ``entries`` (default: the first one's problem)."""
        bad.skip(entries[0], self.too_short(manifest, entries[0]))

    def extract(self, wavs: List[np.ndarray]) -> List[np.ndarray]:
        """Features ``(T_i, dim)`` float32 of each waveform ``(S_i,)`` of a window."""
        raise NotImplementedError

    def finish(self) -> None:
        """Write the kind's extra outputs once the ``.npy`` is complete (before the report and ``.len``)."""


@dataclass
class ShardJob:
    """One shard of a manifest and where its outputs go (see :func:`plan_shard`)."""

    manifest: Manifest
    entries: List[ManifestEntry]
    split: str
    nshard: int
    rank: int
    feat_dir: str
    npy_path: Path
    len_path: Path
    bad: BadAudio
    extra_outputs: List[Path] = field(default_factory=list)

    @property
    def desc(self) -> str:
        return f"{self.split} {self.rank}/{self.nshard}"

    def begin(self) -> None:
        """Check the output folder and delete the shard's old outputs (``.len`` first)."""
        check_writable_dir(self.feat_dir)
        begin_shard(self.len_path, self.npy_path, *self.extra_outputs, self.bad.report)


def plan_shard(tsv_dir: str, split: str, nshard: ShardArg, rank: ShardArg, feat_dir: str,
               skip_bad: bool = False) -> ShardJob:
    """Resolve the shard (``"env"`` allowed), read the manifest and name the outputs; touches no file."""
    nshard, rank = resolve_shard(nshard, rank)
    manifest = read_manifest(manifest_path(tsv_dir, split))
    entries = manifest.shard(nshard, rank)
    npy_path, len_path = feat_paths(feat_dir, split, rank, nshard)
    bad = BadAudio(skip_bad, skipped_path(feat_dir, split, rank, nshard))
    return ShardJob(manifest, entries, split, nshard, rank, feat_dir, npy_path, len_path, bad)


def check_too_short(job: ShardJob, feature: ShardFeature) -> set:
    """The entries too short for one frame; raises (``refuse_too_short``) when there are any without --skip-bad."""
    too_short = [e for e in job.entries if feature.too_short(job.manifest, e) is not None]
    if too_short and not job.bad.skip_bad:
        feature.refuse_too_short(job.manifest, too_short, job.bad)
    return set(too_short)


@dataclass
class DumpStats:
    """What :func:`dump_shard` wrote."""

    utterances: int = 0
    frames: int = 0
    samples: int = 0
    dim: int = 0
    seconds: float = 0.0


def windows(entries: Sequence[ManifestEntry], window_samples: int,
            left_out: Optional[set] = None) -> Iterator[List[ManifestEntry]]:
    """Consecutive runs of entries of about ``window_samples`` samples (at least one entry each);
    entries in ``left_out`` (never read) count no samples."""
    window: List[ManifestEntry] = []
    total = 0
    for e in entries:
        window.append(e)
        total += 0 if left_out and e in left_out else e.n_samples
        if total >= window_samples:
            yield window
            window, total = [], 0
    if window:
        yield window


def dump_shard(job: ShardJob, feature: ShardFeature, too_short: Optional[set] = None,
               desc: Optional[str] = None) -> DumpStats:
    """Write the features of ``job``'s entries (see the module docstring); call ``job.begin()`` first.

    Args:
        too_short: entries to leave out as too short (:func:`check_too_short`); reported with --skip-bad.
        desc: progress-bar label (default ``"{feature.name} {split} {rank}/{nshard}"``).
    """
    too_short = too_short or set()
    manifest, bad = job.manifest, job.bad

    def read(window: List[ManifestEntry]) -> List[Optional[np.ndarray]]:
        wavs = []
        for e in window:
            if e in too_short:
                bad.skip(e, feature.too_short(manifest, e))
                wavs.append(None)
            else:
                wavs.append(bad.read(manifest, e, feature.sample_rate))  # raises without --skip-bad
        return wavs

    stats = DumpStats()
    runs = list(windows(job.entries, max(feature.window_samples, 1), too_short))
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool, atomic_output(job.len_path) as len_f:
        with NpyStreamWriter(job.npy_path, dim=feature.dim) as writer:
            bar = progress(total=len(job.entries), desc=desc or f"{feature.name} {job.desc}", unit="utt")
            nxt = pool.submit(read, runs[0]) if feature.read_ahead and runs else None
            for k, window in enumerate(runs):
                if nxt is not None:
                    wavs = nxt.result()
                    if k + 1 < len(runs):  # read the next window while this one is extracted
                        nxt = pool.submit(read, runs[k + 1])
                else:
                    wavs = read(window)
                kept = [(e, w) for e, w in zip(window, wavs) if w is not None]
                feats = feature.extract([w for _, w in kept]) if kept else []
                for (e, wav), feat in zip(kept, feats):
                    writer.append(feat, what=f"{manifest.path}:{e.line} ({e.relpath})")
                    len_f.write(f"{len(feat)}\n")
                    stats.utterances += 1
                    stats.frames += len(feat)
                    stats.samples += len(wav)
                bar.update(len(window))
            bar.close()
        feature.finish()
        bad.write_report()
    stats.dim = writer.dim or 0
    stats.seconds = time.perf_counter() - start
    return stats


def too_short_listing(manifest: Manifest, entries: List[ManifestEntry], what: str) -> UserError:
    """A :class:`UserError` listing (up to 5) too-short ``entries``: ``what`` says why they have no frame."""
    listed = "; ".join(f"{manifest.path}:{e.line}: {e.relpath} ({e.n_samples} samples)"
                       for e in sorted(entries, key=lambda e: e.line)[:5])
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    return UserError(f"{len(entries)} file(s) are {what}: {listed}{more}; remove them from the manifest "
                     f"(or pass --skip-bad)")
