"""Shared helpers of the label pipeline: shard paths, manifests, audio checks, atomic outputs, logging.

Every script in ``simple_kmeans`` goes through these helpers so that the on-disk contract
(fairseq's ``{split}_{rank}_{nshard}.npy/.len/.km`` layout), the error messages and the
"write to a temporary name, rename when complete" rule live in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

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


SHARD_ENV: Tuple[Tuple[str, str], ...] = (
    ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID"),  # sbatch --array=0-(N-1): one task per shard
    ("WORLD_SIZE", "RANK"),  # torchrun, fairseq-ext-run-shards
)
"""``(nshard variable, rank variable)`` pairs read by :func:`resolve_shard`, first match wins."""

FROM_ENV = ("env", "-")
"""Values of a NSHARD / RANK argument that mean "read it from the environment"."""

ShardArg = Union[int, str, None]


def shard_arg(value: str) -> Union[int, str]:
    """argparse ``type`` of NSHARD / RANK: an integer, or ``env`` / ``-`` (resolved by :func:`resolve_shard`)."""
    if value.strip().lower() in FROM_ENV:
        return "env"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'env' (read from the environment), got {value!r}") from None


def _from_env(value: ShardArg) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in FROM_ENV)


def _env_int(env: Mapping[str, str], var: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise PipelineError(f"${var}={env[var]!r} is not an integer") from None


def resolve_shard(nshard: ShardArg, rank: ShardArg,
                  environ: Optional[Mapping[str, str]] = None) -> Tuple[int, int]:
    """``(nshard, rank)`` of a dumping job; ``"env"``, ``"-"`` or None are read from the environment.

    Sources, first match wins (both values come from the same source when both are ``env``):
    ``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_ID`` (a SLURM job array whose indices are the
    ranks), then ``WORLD_SIZE`` / ``RANK`` (torchrun, fairseq-ext-run-shards). The log line and
    every error name the variable a value came from. NSHARD from ``SLURM_ARRAY_TASK_COUNT`` is
    refused unless the array is exactly ``0..N-1`` (a rerun of a few ranks, ``--array=3,7``, must
    give NSHARD as a number).
    """
    env = os.environ if environ is None else environ
    origin = {"nshard": "the command line", "rank": "the command line"}
    want_n, want_r = _from_env(nshard), _from_env(rank)
    if want_n or want_r:
        def needed(pair: Tuple[str, str]) -> List[str]:
            return ([pair[0]] if want_n else []) + ([pair[1]] if want_r else [])

        source = next((pair for pair in SHARD_ENV if all(env.get(v, "").strip() for v in needed(pair))), None)
        if source is None:
            wanted = " and ".join(n for n, w in (("NSHARD", want_n), ("RANK", want_r)) if w)
            options = " or ".join("/".join(needed(pair)) for pair in SHARD_ENV)
            raise PipelineError(f"{wanted} is 'env' but none of {options} is set; give {wanted} as a "
                                f"number, or run the job in a SLURM array (sbatch --array=0-N) or under "
                                f"fairseq-ext-run-shards / torchrun")
        count_var, id_var = source
        if want_n:
            nshard, origin["nshard"] = _env_int(env, count_var), f"${count_var}"
            lo, hi = env.get("SLURM_ARRAY_TASK_MIN"), env.get("SLURM_ARRAY_TASK_MAX")
            if count_var.startswith("SLURM") and lo and hi and (lo.strip(), hi.strip()) != ("0", str(nshard - 1)):
                raise PipelineError(
                    f"NSHARD from ${count_var}={nshard} needs an array of exactly 0..{nshard - 1}, but this "
                    f"array spans {lo}..{hi}: give NSHARD as a number (array indices are the ranks)")
        if want_r:
            rank, origin["rank"] = _env_int(env, id_var), f"${id_var}"
    try:
        nshard, rank = int(nshard), int(rank)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PipelineError(f"nshard and rank must be integers or 'env', got {nshard!r} and {rank!r}") from None
    if nshard < 1:
        raise PipelineError(f"nshard must be >= 1, got {nshard} (from {origin['nshard']})")
    if not 0 <= rank < nshard:
        raise PipelineError(
            f"rank {rank} (from {origin['rank']}) is not in [0, {nshard}) (nshard from {origin['nshard']})"
            + ("; SLURM array indices are the ranks: submit with --array=0-" + str(nshard - 1)
               if origin["rank"].startswith("$SLURM") else ""))
    if want_n or want_r:
        logger.info("shard %d of %d: rank from %s, nshard from %s", rank, nshard, origin["rank"], origin["nshard"])
    return nshard, rank


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

_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write to another folder",
    errno.EFBIG: "the file is too large for this file system or for `ulimit -f`",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "a part of the path does not exist",
}
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""errno values that mean "this output cannot be written" wherever they are raised."""


def output_error(path: os.PathLike | str, e: OSError) -> PipelineError:
    """A :class:`PipelineError` for a failed write of ``path``, with what to do about it."""
    hint = _WRITE_HINTS.get(e.errno or 0, "check the output folder")
    return PipelineError(f"cannot write {path}: {e.strerror or e} ({hint}); the output was not completed "
                         f"and nothing was marked complete")


def make_dirs(directory: os.PathLike | str) -> Path:
    """``mkdir -p directory`` with a :class:`PipelineError` naming it on failure."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"cannot create output folder {directory}: {e.strerror or e} "
                            f"({_WRITE_HINTS.get(e.errno or 0, 'check the path')})") from None
    return directory


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str, mode: str = "w") -> Iterator:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.

    A full disk or an unwritable folder raises :class:`PipelineError` naming ``path``; the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    make_dirs(path.parent)
    tmp = atomic_tmp_path(path)
    try:
        f = open(tmp, mode)
    except OSError as e:
        raise output_error(path, e) from None
    done = False
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        done = True
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise output_error(path, e) from None
        raise
    finally:
        if not done:
            with contextlib.suppress(OSError):
                f.close()  # may fail again flushing to a full disk
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def atomic_tmp_path(path: os.PathLike | str) -> Path:
    """A temporary sibling name for ``path`` that no reader takes for a finished output."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def temp_files(path: os.PathLike | str) -> List[Path]:
    """Temporary files (``.NAME.tmpPID``) of ``path`` that writers have left or are writing."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.tmp*"))


def remove_dead_temp_files(*paths: os.PathLike | str) -> None:
    """Delete temporary files that killed earlier runs left for these outputs.

    A temporary file whose process still runs on this machine (the same shard started twice)
    is left alone.
    """
    for path in paths:
        for tmp in temp_files(path):
            pid = tmp.name.rsplit(".tmp", 1)[1]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
                continue  # that process still runs: leave it alone
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            logger.info("removing %s left by an interrupted run", tmp)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def begin_shard(commit: os.PathLike | str, *others: os.PathLike | str) -> None:
    """Prepare to (re)write a shard whose outputs are ``commit`` and ``others``.

    The shard protocol: ``commit`` (the ``.len`` file of a feature shard) is renamed into place
    last, after every other output, and is deleted first here, before the others; so a shard
    whose ``commit`` file exists is complete, whatever moment an earlier run was killed at.
    Temporary files of dead earlier runs are removed too.
    """
    for old in (commit, *others):
        old = Path(old)
        if old.exists():
            logger.info("removing previous output %s", old)
            try:
                old.unlink()
            except OSError as e:
                raise output_error(old, e) from None
    remove_dead_temp_files(commit, *others)


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
    Write failures (full disk, ...) raise :class:`PipelineError` naming ``path``.
    """

    HEADER_LEN = 128

    def __init__(self, path: os.PathLike | str, dim: Optional[int] = None, dtype=np.float32):
        self.path = Path(path)
        make_dirs(self.path.parent)
        self.tmp = atomic_tmp_path(self.path)
        self.dtype = np.dtype(dtype)
        self.dim = dim
        self.rows = 0
        try:
            self._f = open(self.tmp, "wb")
            self._f.write(b"\0" * self.HEADER_LEN)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from None

    def append(self, feats: np.ndarray) -> None:
        """Append an array of shape ``(T, dim)``."""
        feats = np.ascontiguousarray(feats, dtype=self.dtype)
        if feats.ndim != 2:
            raise ValueError(f"expected a 2-D (T, C) array, got shape {feats.shape}")
        if self.dim is None:
            self.dim = feats.shape[1]
        elif feats.shape[1] != self.dim:
            raise ValueError(f"feature dim changed from {self.dim} to {feats.shape[1]}")
        try:
            self._f.write(feats.tobytes())
        except OSError as e:
            raise output_error(self.path, e) from None
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
        try:
            self._f.flush()
            self._f.seek(0)
            self._f.write(self._header())
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from None

    def abort(self) -> None:
        """Drop the partial file."""
        f = getattr(self, "_f", None)
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()  # may fail again flushing to a full disk
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> "NpyStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- --skip-bad

SKIPPED_HEADER = "line\trelpath\tn_samples\tproblem\n"


def skipped_path(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> Path:
    """Report of the files a ``--skip-bad`` dump left out: ``{split}_{rank}_{nshard}.skipped.tsv``."""
    stem = shard_stem(feat_dir, split, rank, nshard)
    return stem.with_name(stem.name + ".skipped.tsv")


class BadAudio:
    """The unusable files of a shard: with ``skip_bad`` they are recorded and reported, else an error.

    Args:
        skip_bad: leave bad files out (and list them) instead of raising.
        report: the ``.skipped.tsv`` path (named in errors and logs).
    """

    def __init__(self, skip_bad: bool, report: Path):
        self.skip_bad, self.report = skip_bad, report
        self.skipped: List[Tuple[ManifestEntry, str]] = []

    def skip(self, entry: ManifestEntry, problem: str) -> None:
        """Record ``entry`` as left out; raises instead when ``skip_bad`` is off."""
        if not self.skip_bad:
            raise PipelineError(f"{problem}; or rerun with --skip-bad to leave such files out "
                                f"(they are listed in {self.report.name})")
        logger.warning("skipping %s", problem)
        self.skipped.append((entry, problem))

    def write_report(self) -> Optional[Path]:
        """Write the report (only with ``skip_bad``; an empty table when nothing was skipped)."""
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


def read_skipped_lines(report: os.PathLike | str) -> List[int]:
    """Manifest line numbers listed in a ``.skipped.tsv`` report (empty if there is none)."""
    report = Path(report)
    if not report.is_file():
        return []
    lines = report.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines[1:], start=2):
        try:
            out.append(int(line.split("\t", 1)[0]))
        except ValueError:
            raise PipelineError(f"{report}:{i}: expected a manifest line number, got {line!r}") from None
    return out


def kept_entries(manifest: Manifest, nshard: int, rank: int, feat_dir: os.PathLike | str,
                 split: str) -> List[ManifestEntry]:
    """Entries of shard ``rank`` that its feature shard holds (the shard minus its skipped report)."""
    skipped = set(read_skipped_lines(skipped_path(feat_dir, split, rank, nshard)))
    return [e for e in manifest.shard(nshard, rank) if e.line not in skipped]


def write_kept_manifest(tsv_dir: os.PathLike | str, split: str, nshard: int,
                        feat_dir: os.PathLike | str, dest_dir: os.PathLike | str) -> Path:
    """Write ``{dest_dir}/{split}.tsv``: the manifest minus the files the dumps skipped.

    Its lines are, in order, the utterances of the feature shards (and so of the label shards
    and of the merged ``{split}.km``): train fairseq on it. Every shard must be complete.
    """
    src = manifest_path(tsv_dir, split)
    dest = manifest_path(dest_dir, split)
    if dest.resolve() == src.resolve():
        raise PipelineError(f"the kept-files manifest would overwrite {src}: choose another folder")
    manifest = read_manifest(src)
    rows: List[ManifestEntry] = []
    for rank in range(nshard):
        kept = kept_entries(manifest, nshard, rank, feat_dir, split)
        len_path = feat_paths(feat_dir, split, rank, nshard)[1]
        n = len(read_lengths(len_path))
        if n != len(kept):
            raise PipelineError(f"{len_path} has {n} utterances but shard {rank}/{nshard} of {src} keeps "
                                f"{len(kept)}: the shard was made from another manifest; redo it")
        rows += kept
    with atomic_output(dest) as f:
        f.write(f"{manifest.root}\n")
        f.writelines(f"{e.relpath}\t{e.n_samples}\n" for e in rows)
    logger.info("wrote %s: %d of %d files (%d skipped)", dest, len(rows), len(manifest), len(manifest) - len(rows))
    return dest


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
