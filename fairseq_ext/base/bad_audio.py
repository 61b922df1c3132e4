"""``--skip-bad``: the report of audio files a dump left out, and the kept-files manifest that matches the shards."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import (Manifest, ManifestEntry, far_out_of_range, manifest_path, range_warning,
                                       read_audio, read_manifest)
from fairseq_ext.base.shards import feat_paths, read_lengths, shard_stem

logger = logging.getLogger("simple_kmeans")

# --------------------------------------------------------------------------- --skip-bad

SKIPPED_HEADER = "line\trelpath\tn_samples\tproblem\n"


def skipped_path(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """Report of the files a ``--skip-bad`` dump left out: ``{split}_{rank}_{nshard}.skipped.tsv``."""
    stem = shard_stem(feat_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".skipped.tsv")


class BadAudio:
    """The unusable files of a shard: with ``skip_bad`` they are recorded and reported, else an error.

    Unusable: what :func:`read_audio` refuses (missing, unreadable, not mono, wrong rate or length,
    non-finite samples). Files with samples far outside [-1, 1] are usable: each gets one
    warning, and :meth:`write_report` logs how many there were.

    Args:
        skip_bad: leave bad files out (and list them) instead of raising.
        report: the ``.skipped.tsv`` path (named in errors and logs).
    """

    def __init__(self, skip_bad: bool, report: Path):
        self.skip_bad, self.report = skip_bad, report
        self.skipped: List[Tuple[ManifestEntry, str]] = []
        self.out_of_range: List[ManifestEntry] = []

    def skip(self, entry: ManifestEntry, problem: str) -> None:
        """Record ``entry`` as left out; raises instead when ``skip_bad`` is off."""
        if not self.skip_bad:
            raise UserError(f"{problem}; or rerun with --skip-bad to leave such files out "
                            f"(they are listed in {self.report.name})")
        logger.warning("skipping %s", problem)
        self.skipped.append((entry, problem))

    def read(self, manifest: Manifest, entry: ManifestEntry, sample_rate: int) -> Optional[np.ndarray]:
        """The waveform of ``entry`` (``read_audio`` with the manifest's checks), or None when it is
        unusable and skipped (raises instead without ``skip_bad``)."""
        path, where = manifest.audio_path(entry), f"{manifest.path}:{entry.line}"
        try:
            wav = read_audio(path, sample_rate, entry.n_samples, where=where, warn_range=False)
        except UserError as e:
            self.skip(entry, str(e))
            return None
        peak = far_out_of_range(wav)
        if peak is not None:
            logger.warning("%s", range_warning(path, peak, where))
            self.out_of_range.append(entry)
        return wav

    def write_report(self) -> Optional[Path]:
        """Write the report (only with ``skip_bad``; an empty table when nothing was skipped)."""
        if self.out_of_range:
            logger.warning("%d audio file(s) of this shard have samples far outside [-1, 1] (warned above)",
                           len(self.out_of_range))
        if not self.skip_bad:
            return None
        with atomic_output(self.report) as f:
            f.write(SKIPPED_HEADER)
            for entry, problem in self.skipped:
                clean = " ".join(problem.split())
                f.write(f"{entry.line}\t{entry.relpath}\t{entry.n_samples}\t{clean}\n")
        if self.skipped:
            logger.warning("left out %d bad audio file(s) of this shard, listed in %s",
                           len(self.skipped), self.report)
        return self.report


def read_skipped(report: os.PathLike | str) -> List[Tuple[int, str]]:
    """``(manifest line, relpath)`` rows of a ``.skipped.tsv`` report (empty if there is none)."""
    report = Path(report)
    if not report.is_file():
        return []
    lines = report.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        try:
            out.append((int(parts[0]), parts[1]))
        except (ValueError, IndexError):
            raise UserError(f"{report}:{i}: expected 'line<TAB>relpath<TAB>...', got {line!r}") from None
    return out


def read_skipped_lines(report: os.PathLike | str) -> List[int]:
    """Manifest line numbers listed in a ``.skipped.tsv`` report (empty if there is none)."""
    return [line for line, _ in read_skipped(report)]


def kept_entries(manifest: Manifest, nshard: int, rank: int, feat_dir: os.PathLike | str,
                 split: str) -> List[ManifestEntry]:
    """Entries of shard ``rank`` that its feature shard holds (the shard minus its skipped report).

    Every row of the report must name a file of this shard at its line of ``manifest``: a report
    made from another manifest (e.g. the kept-files manifest given instead of the original one)
    is an error, never a silent misalignment.
    """
    report = skipped_path(feat_dir, split, rank, nshard)
    entries = manifest.shard(nshard, rank)
    by_line = {e.line: e for e in entries}
    skipped = set()
    for line, relpath in read_skipped(report):
        entry = by_line.get(line)
        if entry is None or entry.relpath != relpath:
            found = f"line {line} is {entry.relpath}" if entry else f"line {line} is not in shard {rank}/{nshard}"
            raise UserError(
                f"{report} lists {relpath} at line {line} of the manifest, but in {manifest.path} {found}: "
                f"give the manifest the features were dumped from (not the kept-files manifest), or redo the "
                f"shard")
        skipped.add(line)
    return [e for e in entries if e.line not in skipped]


def count_skipped(feat_dir: os.PathLike | str, split: str, nshard: int) -> Tuple[int, List[Path]]:
    """``(files left out, reports listing them)`` over all feature shards of ``split``."""
    total, reports = 0, []
    for rank in range(nshard):
        report = skipped_path(feat_dir, split, rank, nshard)
        n = len(read_skipped(report))
        if n:
            total += n
            reports.append(report)
    return total, reports


def write_kept_manifest(tsv_dir: os.PathLike | str, split: str, nshard: int,
                        feat_dir: os.PathLike | str, dest_dir: os.PathLike | str) -> Path:
    """Write ``{dest_dir}/{split}.tsv``: the manifest minus the files the dumps skipped.

    Its lines are, in order, the utterances of the feature shards (and so of the label shards
    and of the merged ``{split}.km``): train fairseq on it. Every shard must be complete.
    """
    src = manifest_path(tsv_dir, split)
    dest = manifest_path(dest_dir, split)
    if dest.resolve() == src.resolve():
        raise UserError(f"the kept-files manifest would overwrite {src}: choose another folder")
    manifest = read_manifest(src)
    rows: List[ManifestEntry] = []
    for rank in range(nshard):
        kept = kept_entries(manifest, nshard, rank, feat_dir, split)
        len_path = feat_paths(feat_dir, split, rank, nshard)[1]
        n = len(read_lengths(len_path))
        if n != len(kept):
            raise UserError(f"{len_path} has {n} utterances but shard {rank}/{nshard} of {src} keeps "
                            f"{len(kept)}: the shard was made from another manifest; redo it")
        rows += kept
    with atomic_output(dest) as f:
        f.write(f"{manifest.root}\n")
        f.writelines(f"{e.relpath}\t{e.n_samples}\n" for e in rows)
    logger.info("wrote %s: %d of %d files (%d skipped)", dest, len(rows), len(manifest), len(manifest) - len(rows))
    return dest
