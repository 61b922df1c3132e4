"""Crash-safe outputs: temporary names renamed when complete, streamed ``.npy`` writing, temp-file cleanup,
and clear errors for full disks and unwritable folders."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from fairseq_ext.base.errors import UserError

logger = logging.getLogger("simple_kmeans")

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


def output_error(path: os.PathLike | str, e: OSError) -> UserError:
    """A :class:`UserError` for a failed write of ``path``, with what to do about it."""
    hint = _WRITE_HINTS.get(e.errno or 0, "check the output folder")
    return UserError(f"cannot write {path}: {e.strerror or e} ({hint}); the output was not completed "
                     f"and nothing was marked complete")


def make_dirs(directory: os.PathLike | str) -> Path:
    """``mkdir -p directory`` with a :class:`UserError` naming it on failure."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {directory}: {e.strerror or e} "
                        f"({_WRITE_HINTS.get(e.errno or 0, 'check the path')})") from None
    return directory


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str, mode: str = "w") -> Iterator:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.

    A full disk or an unwritable folder raises :class:`UserError` naming ``path``; the
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
        raise UserError(f"output folder {directory} is not writable: {e}") from None
    return directory


class NpyStreamWriter:
    """Append 2-D float32 rows to an ``.npy`` file without holding them in memory.

    A fixed-size header is reserved and rewritten with the final shape on :meth:`close`;
    the data is written to a temporary name and renamed onto ``path`` only when closed
    successfully, so an interrupted job never leaves an ``.npy`` that looks complete.
    Write failures (full disk, ...) raise :class:`UserError` naming ``path``, and so do
    non-finite (NaN/Inf) features: nothing downstream (k-means, labels) may see them.
    """

    HEADER_LEN = 128

    def __init__(self, path: os.PathLike | str, dim: Optional[int] = None, dtype=np.float32):
        self.path = Path(path)
        make_dirs(self.path.parent)
        self.tmp = atomic_tmp_path(self.path)
        self.dtype = np.dtype(dtype)
        self.dim = dim
        self.rows = 0
        self.appended = 0  # arrays appended so far (one per utterance in the feature dumps)
        try:
            self._f = open(self.tmp, "wb")
            self._f.write(b"\0" * self.HEADER_LEN)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from None

    def append(self, feats: np.ndarray, what: str = "") -> None:
        """Append an array of shape ``(T, dim)``.

        Args:
            feats: the rows to append, shape ``(T, dim)``; they must be finite.
            what: the utterance they belong to, for the error message (e.g. ``"train.tsv:12 (a.wav)"``);
                by default its position in this file.
        """
        with np.errstate(over="ignore"):  # values that overflow the dtype become Inf, refused below
            feats = np.ascontiguousarray(feats, dtype=self.dtype)
        if feats.ndim != 2:
            raise ValueError(f"expected a 2-D (T, C) array, got shape {feats.shape}")
        if self.dim is None:
            self.dim = feats.shape[1]
        elif feats.shape[1] != self.dim:
            raise ValueError(f"feature dim changed from {self.dim} to {feats.shape[1]}")
        if self.dtype.kind == "f" and not np.isfinite(feats).all():
            n_bad = int(np.count_nonzero(~np.isfinite(feats)))
            what = what or (f"utterance {self.appended + 1} of this file "
                            f"(rows {self.rows}..{self.rows + len(feats) - 1})")
            raise UserError(f"cannot write {self.path}: the features of {what} have {n_bad} non-finite values "
                            f"(NaN or Inf), which would corrupt k-means and labels; check that audio file "
                            f"(repair or remove it) or the feature model; nothing was written")
        try:
            self._f.write(feats.tobytes())
        except OSError as e:
            raise output_error(self.path, e) from None
        self.rows += feats.shape[0]
        self.appended += 1

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
