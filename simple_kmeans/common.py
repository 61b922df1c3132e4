"""Shared helpers of the label pipeline: shard paths, manifests, audio checks, atomic outputs, logging.

Every script in ``simple_kmeans`` goes through these helpers so that the on-disk contract
(fairseq's ``{split}_{rank}_{nshard}.npy/.len/.km`` layout), the error messages and the
"write to a temporary name, rename when complete" rule live in one place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger("simple_kmeans")

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class PipelineError(RuntimeError):
    """An error caused by the user's input or environment; printed without a traceback."""


def setup_logging(level: Optional[str] = None) -> None:
    """Configure root logging once (level from ``$LOGLEVEL``, default INFO) to stderr."""
    level = (level or os.environ.get("LOGLEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not any(getattr(h, "_fairseq_ext", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        handler._fairseq_ext = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def run_cli(main: Callable[..., object], parser, argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv`` with ``parser``, call ``main(**vars(args))``; user errors exit with status 2."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        main(**vars(args))
    except PipelineError as e:
        logging.getLogger(parser.prog).error("%s", e)
        sys.exit(2)


def progress(iterable=None, **kwargs):
    """tqdm progress bar on stderr, disabled when stderr is not a terminal unless $FAIRSEQ_EXT_PROGRESS=1."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("FAIRSEQ_EXT_PROGRESS") == "1")
    kwargs.setdefault("disable", disable)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------- shards


def shard_range(tot: int, nshard: int, rank: int) -> Tuple[int, int]:
    """fairseq's shard range: ``[round(tot/nshard*rank), round(tot/nshard*(rank+1)))``."""
    if nshard < 1:
        raise PipelineError(f"nshard must be >= 1, got {nshard}")
    if not 0 <= rank < nshard:
        raise PipelineError(f"rank must be in [0, {nshard}), got {rank}")
    if nshard > tot:
        raise PipelineError(
            f"nshard={nshard} is larger than the number of utterances ({tot}): "
            f"use at most {tot} shards"
        )
    start = round(tot / nshard * rank)
    end = round(tot / nshard * (rank + 1))
    return start, end


def shard_stem(directory: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """``{directory}/{split}_{rank}_{nshard}`` (append ``.npy``, ``.len`` or ``.km``)."""
    return Path(directory) / f"{split}_{rank}_{nshard}"


def feat_paths(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Tuple[Path, Path]:
    """Paths of a feature shard: ``(.npy, .len)``."""
    stem = shard_stem(feat_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".len")


def label_path(lab_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """Path of a label shard ``{split}_{rank}_{nshard}.km``."""
    stem = shard_stem(lab_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".km")


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
    """Read and validate a manifest; raise :class:`PipelineError` naming the file and line."""
    tsv_path = Path(tsv_path)
    if not tsv_path.is_file():
        raise PipelineError(f"manifest {tsv_path} does not exist: create it with fairseq-ext-manifest")
    with open(tsv_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise PipelineError(f"{tsv_path}:1: empty manifest: line 1 must be the audio root directory")
    root = lines[0].rstrip()
    entries = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise PipelineError(
                f"{tsv_path}:{i}: expected 'relpath<TAB>n_samples', got {line!r}"
            )
        try:
            n = int(parts[1])
        except ValueError:
            raise PipelineError(f"{tsv_path}:{i}: n_samples {parts[1]!r} is not an integer") from None
        entries.append(ManifestEntry(parts[0], n, i))
    if not entries:
        raise PipelineError(f"{tsv_path}: manifest lists no audio files")
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
        raise PipelineError(f"{ctx}audio file {path} does not exist")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise PipelineError(f"{ctx}cannot read audio file {path}: {e}") from None
    if wav.shape[1] != 1:
        raise PipelineError(
            f"{ctx}{path} has {wav.shape[1]} channels; convert it to mono "
            f"(e.g. sox in.wav -c 1 out.wav)"
        )
    if expected_sr is not None and sr != expected_sr:
        raise PipelineError(
            f"{ctx}{path} has sample rate {sr} Hz, expected {expected_sr} Hz; resample it "
            f"(e.g. sox in.wav -r {expected_sr} out.wav)"
        )
    wav = wav[:, 0]
    if expected_len is not None and len(wav) != expected_len:
        raise PipelineError(
            f"{ctx}{path} has {len(wav)} samples but the manifest says {expected_len}; "
            f"regenerate the manifest"
        )
    return wav


# --------------------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str, mode: str = "w") -> Iterator:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_tmp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_tmp_path(path: os.PathLike | str) -> Path:
    """A temporary sibling name for ``path`` that no reader takes for a finished output."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def check_writable_dir(directory: os.PathLike | str) -> Path:
    """Create ``directory`` if needed and check that files can be written into it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test"):
            pass
    except OSError as e:
        raise PipelineError(f"output folder {directory} is not writable: {e}") from None
    return directory


class NpyStreamWriter:
    """Append 2-D float32 rows to an ``.npy`` file without holding them in memory.

    A fixed-size header is reserved and rewritten with the final shape on :meth:`close`;
    the data is written to a temporary name and renamed onto ``path`` only when closed
    successfully, so an interrupted job never leaves an ``.npy`` that looks complete.
    """

    HEADER_LEN = 128

    def __init__(self, path: os.PathLike | str, dim: Optional[int] = None, dtype=np.float32):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = atomic_tmp_path(self.path)
        self.dtype = np.dtype(dtype)
        self.dim = dim
        self.rows = 0
        self._f = open(self.tmp, "wb")
        self._f.write(b"\0" * self.HEADER_LEN)

    def append(self, feats: np.ndarray) -> None:
        """Append an array of shape ``(T, dim)``."""
        feats = np.ascontiguousarray(feats, dtype=self.dtype)
        if feats.ndim != 2:
            raise ValueError(f"expected a 2-D (T, C) array, got shape {feats.shape}")
        if self.dim is None:
            self.dim = feats.shape[1]
        elif feats.shape[1] != self.dim:
            raise ValueError(f"feature dim changed from {self.dim} to {feats.shape[1]}")
        self._f.write(feats.tobytes())
        self.rows += feats.shape[0]

    def _header(self) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (self.rows, self.dim or 0)}
        body = repr(d).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        n = self.HEADER_LEN - len(prefix) - 2
        body = body + b" " * (n - len(body) - 1) + b"\n"
        return prefix + len(body).to_bytes(2, "little") + body

    def close(self) -> None:
        """Finish the header and rename the file into place."""
        self._f.seek(0)
        self._f.write(self._header())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> "NpyStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- reading shards


def read_lengths(len_path: os.PathLike | str) -> np.ndarray:
    """Read a ``.len`` file (one frame count per line) with errors naming the line."""
    len_path = Path(len_path)
    if not len_path.is_file():
        raise PipelineError(f"{len_path} does not exist: run the feature dumping step for this shard")
    out = []
    with open(len_path) as f:
        for i, line in enumerate(f, start=1):
            try:
                out.append(int(line))
            except ValueError:
                raise PipelineError(f"{len_path}:{i}: {line.strip()!r} is not a frame count") from None
    return np.asarray(out, dtype=np.int64)


def load_feat_shard(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int,
                    mmap: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Open a feature shard (memory-mapped by default) and check ``.npy`` against ``.len``.

    Returns:
        ``(feats, lengths)``: ``feats`` of shape ``(sum(lengths), C)``.
    """
    npy, lenp = feat_paths(feat_dir, split, rank, nshard)
    if not npy.is_file():
        raise PipelineError(f"{npy} does not exist: run the feature dumping step for shard {rank}/{nshard}")
    lengths = read_lengths(lenp)
    try:
        feats = np.load(npy, mmap_mode="r" if mmap else None)
    except Exception as e:
        raise PipelineError(f"cannot read {npy}: {e}; delete it and rerun the dumping step") from None
    if feats.ndim != 2:
        raise PipelineError(f"{npy} has shape {feats.shape}, expected (frames, dim)")
    if int(lengths.sum()) != feats.shape[0]:
        raise PipelineError(
            f"{npy} has {feats.shape[0]} frames but {lenp} sums to {int(lengths.sum())}: "
            f"the shard is inconsistent; delete both files and rerun the dumping step"
        )
    return feats, lengths
