"""Reading fairseq manifests (``{split}.tsv``) and their audio files, with errors naming file and line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import shard_range


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ManifestEntry:
    """One manifest line: relative path, sample count, and its 1-based line number in the file."""

    relpath: str
    n_samples: int
    line: int


@dataclass
class Manifest:
    """A fairseq ``{split}.tsv``: root directory on line 1, then ``relpath<TAB>n_samples`` lines."""

    path: Path
    root: str
    entries: List[ManifestEntry]

    def __len__(self) -> int:
        return len(self.entries)

    def audio_path(self, entry: ManifestEntry) -> str:
        return os.path.join(self.root, entry.relpath)

    def uid(self, entry: ManifestEntry) -> str:
        """Utterance id: the file's basename without extension (fairseq's ``measure_teacher_quality``)."""
        return os.path.splitext(os.path.basename(entry.relpath))[0]

    def shard(self, nshard: int, rank: int) -> List[ManifestEntry]:
        start, end = shard_range(len(self.entries), nshard, rank)
        return self.entries[start:end]


def read_manifest(tsv_path: os.PathLike | str) -> Manifest:
    """Read and validate a manifest; raise :class:`UserError` naming the file and line."""
    tsv_path = Path(tsv_path)
    if not tsv_path.is_file():
        raise UserError(f"manifest {tsv_path} does not exist: create it with fairseq-ext-manifest")
    with open(tsv_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise UserError(f"{tsv_path}:1: empty manifest: line 1 must be the audio root directory")
    root = lines[0].rstrip()
    entries = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise UserError(
                f"{tsv_path}:{i}: expected 'relpath<TAB>n_samples', got {line!r}"
            )
        try:
            n = int(parts[1])
        except ValueError:
            raise UserError(f"{tsv_path}:{i}: n_samples {parts[1]!r} is not an integer") from None
        entries.append(ManifestEntry(parts[0], n, i))
    if not entries:
        raise UserError(f"{tsv_path}: manifest lists no audio files")
    return Manifest(tsv_path, root, entries)


def manifest_path(tsv_dir: os.PathLike | str, split: str) -> Path:
    return Path(tsv_dir) / f"{split}.tsv"


# --------------------------------------------------------------------------- audio


def read_audio(
    path: str,
    expected_sr: Optional[int] = 16000,
    expected_len: Optional[int] = None,
    where: str = "",
) -> np.ndarray:
    """Read a mono float32 waveform in [-1, 1] with clear errors.

    Args:
        path: audio file.
        expected_sr: required sample rate, or None to accept any.
        expected_len: sample count from the manifest, checked when given.
        where: context for messages, e.g. ``"train.tsv:12"``.
    Returns:
        waveform of shape ``(T,)``.
    """
    import soundfile as sf

    ctx = f"{where}: " if where else ""
    if not os.path.isfile(path):
        raise UserError(f"{ctx}audio file {path} does not exist")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise UserError(f"{ctx}cannot read audio file {path}: {e}") from None
    if wav.shape[1] != 1:
        raise UserError(
            f"{ctx}{path} has {wav.shape[1]} channels; convert it to mono "
            f"(e.g. sox in.wav -c 1 out.wav)"
        )
    if expected_sr is not None and sr != expected_sr:
        raise UserError(
            f"{ctx}{path} has sample rate {sr} Hz, expected {expected_sr} Hz; resample it "
            f"(e.g. sox in.wav -r {expected_sr} out.wav)"
        )
    wav = wav[:, 0]
    if expected_len is not None and len(wav) != expected_len:
        raise UserError(
            f"{ctx}{path} has {len(wav)} samples but the manifest says {expected_len}; "
            f"regenerate the manifest"
        )
    return wav
