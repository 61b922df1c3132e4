"""Reading fairseq manifests (``{split}.tsv``) and their audio files, with errors naming file and line."""

from __future__ import annotations

import codecs
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import shard_range

logger = logging.getLogger("simple_kmeans")

UID_STYLES = ("basename", "relpath")

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

    def uid(self, entry: ManifestEntry, style: str = "basename") -> str:
        """Utterance id of ``entry``.

        ``basename`` (fairseq's ``measure_teacher_quality``): the file name without extension;
        ``relpath``: the relative path without extension, "/" replaced by "-" (for corpora whose
        basenames repeat).
        """
        stem = os.path.splitext(entry.relpath)[0]
        if style == "basename":
            return os.path.basename(stem)
        if style == "relpath":
            return stem.replace("\\", "/").strip("/").replace("/", "-")
        raise UserError(f"the utterance id style must be one of {', '.join(UID_STYLES)}, got {style!r}")

    def unique_uids(self, style: str = "basename", fix: str = "rename the files") -> List[str]:
        """The utterance id of every entry, in manifest order; a :class:`UserError` naming both
        lines (and saying ``fix``) when two entries share one, since anything keyed by utterance id
        would silently keep only one of them."""
        first: Dict[str, ManifestEntry] = {}
        out = []
        for entry in self.entries:
            uid = self.uid(entry, style)
            if uid in first:
                raise UserError(
                    f"{self.path}:{entry.line}: utterance id {uid!r} is used twice (also line "
                    f"{first[uid].line}); {fix}")
            first[uid] = entry
            out.append(uid)
        return out

    def shard(self, nshard: int, rank: int) -> List[ManifestEntry]:
        start, end = shard_range(len(self.entries), nshard, rank)
        return self.entries[start:end]


ROOT_LINE_HELP = ("line 1 must be the audio root folder alone (an absolute path, no tab), then one "
                  "'relpath<TAB>n_samples' line per file, relpath relative to that root; "
                  "fairseq-ext-manifest writes this format")

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF8, "UTF-8 with a byte-order mark"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def _manifest_text(tsv_path: Path) -> str:
    """The text of a manifest, which must be UTF-8 without a byte-order mark (what fairseq reads)."""
    data = tsv_path.read_bytes()
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise UserError(f"{tsv_path}:1: the manifest is saved as {name}; save it as plain UTF-8 without a "
                            f"byte-order mark (e.g. iconv -f UTF-16 -t UTF-8, or your editor's 'UTF-8' "
                            f"encoding), or regenerate it with fairseq-ext-manifest")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{tsv_path}:{line}: byte 0x{data[e.start]:02x} is not valid UTF-8: save the manifest "
                        f"as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8), or regenerate it with "
                        f"fairseq-ext-manifest") from None


def read_manifest(tsv_path: os.PathLike | str) -> Manifest:
    """Read and validate a manifest; raise :class:`UserError` naming the file and line.

    Refused, because fairseq's own reader fails on them later or they silently change the data:
    another encoding or a byte-order mark, a first line that is a file entry instead of the root,
    blank lines, lines without exactly two tab-separated columns, sample counts that are not
    positive integers, and a file listed twice.
    """
    tsv_path = Path(tsv_path)
    if not tsv_path.is_file():
        raise UserError(f"manifest {tsv_path} does not exist: create it with fairseq-ext-manifest")
    lines = _manifest_text(tsv_path).splitlines()
    if not lines or not lines[0].strip():
        raise UserError(f"{tsv_path}:1: empty manifest: line 1 must be the audio root directory")
    if "\t" in lines[0]:
        looks = "a file entry" if lines[0].split("\t")[-1].strip().isdigit() else "not a folder name"
        raise UserError(f"{tsv_path}:1: {lines[0][:80]!r} looks like {looks}, not the audio root: "
                        f"{ROOT_LINE_HELP}; add the root folder as line 1")
    root = lines[0].rstrip()
    entries = []
    seen: Dict[str, int] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise UserError(f"{tsv_path}:{i}: blank line: remove it (fairseq's reader refuses blank lines)")
        parts = line.split("\t")
        if len(parts) != 2:
            raise UserError(
                f"{tsv_path}:{i}: expected 2 tab-separated columns 'relpath<TAB>n_samples', got "
                f"{len(parts)}: {line[:80]!r}; remove the extra columns"
            )
        try:
            n = int(parts[1])
        except ValueError:
            raise UserError(f"{tsv_path}:{i}: n_samples {parts[1]!r} is not an integer") from None
        if n < 1:
            raise UserError(f"{tsv_path}:{i}: n_samples is {n}: a listed file must have at least one sample; "
                            f"remove the line or regenerate the manifest")
        if parts[0] in seen:
            raise UserError(f"{tsv_path}:{i}: {parts[0]} is listed twice (also line {seen[parts[0]]}): "
                            f"remove the duplicate line")
        seen[parts[0]] = i
        entries.append(ManifestEntry(parts[0], n, i))
    if not entries:
        raise UserError(f"{tsv_path}: manifest lists no audio files")
    return Manifest(tsv_path, root, entries)


def manifest_path(tsv_dir: os.PathLike | str, split: str) -> Path:
    return Path(tsv_dir) / f"{split}.tsv"


# --------------------------------------------------------------------------- audio


FAR_OUT_OF_RANGE = 2.0
"""Float audio whose peak magnitude exceeds this gets a warning (audio is expected in [-1, 1])."""


def check_finite(wav: np.ndarray, path: str, where: str = "") -> None:
    """Raise a :class:`UserError` naming ``path`` when the waveform ``(T,)`` has NaN or Inf samples."""
    finite = np.isfinite(wav)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        ctx = f"{where}: " if where else ""
        raise UserError(f"{ctx}{path} has {len(bad)} non-finite samples (NaN or Inf; the first at sample "
                        f"{bad[0]}): repair or remove the file")


def far_out_of_range(wav: np.ndarray) -> Optional[float]:
    """The peak magnitude of the waveform ``(T,)`` when it exceeds :data:`FAR_OUT_OF_RANGE`, else None."""
    peak = float(np.abs(wav).max()) if len(wav) else 0.0
    return peak if peak > FAR_OUT_OF_RANGE else None


def range_warning(path: str, peak: float, where: str = "") -> str:
    """The warning for audio far outside [-1, 1]."""
    ctx = f"{where}: " if where else ""
    return (f"{ctx}{path} has samples far outside [-1, 1] (peak {peak:.3g}); features are computed from it "
            f"as it is: normalise the file if that is not intended")


def read_audio(
    path: str,
    expected_sr: Optional[int] = 16000,
    expected_len: Optional[int] = None,
    where: str = "",
    warn_range: bool = True,
) -> np.ndarray:
    """Read a mono float32 waveform with clear errors.

    Args:
        path: audio file.
        expected_sr: required sample rate, or None to accept any.
        expected_len: sample count from the manifest, checked when given.
        where: context for messages, e.g. ``"train.tsv:12"``.
        warn_range: log a warning when samples are far outside [-1, 1] (float files); callers
            that count such files themselves pass False and use :func:`far_out_of_range`.
    Returns:
        waveform of shape ``(T,)``. Non-finite samples (NaN/Inf) are a :class:`UserError`.
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
    check_finite(wav, path, where)
    peak = far_out_of_range(wav) if warn_range else None
    if peak is not None:
        logger.warning("%s", range_warning(path, peak, where))
    return wav
