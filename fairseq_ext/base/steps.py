"""Units of work with stamps: the one way this package runs, skips on reruns, and runs in parallel
the steps of the label pipeline, the demo, the sweeps and the experiments.

A unit is a call of a module-level function with keyword arguments, and its output files. After
its outputs are in place, :class:`Runner` writes a stamp ``OUT/.stamps/<unit>.json`` holding a
hash of the call (the function's ``module:qualname``, its arguments) and its inputs; a unit whose
stamp matches and whose outputs exist is skipped. :func:`read_stamp` / :func:`write_stamp` are
the stamp files themselves, for steps that decide "done" in their own way (a training run).
Input files are signed by :func:`file_fingerprint` (size, mtime and a hash of three blocks), small
text inputs by :func:`file_digest` (a full hash). Worker processes die with their parent and hold
its :func:`folder_lock` while they live.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import setup_logging
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("pipeline")

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def digest(obj) -> str:
    """Stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: os.PathLike | str) -> str:
    """Content hash of a (small) file such as a manifest or a phone reference."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


FINGERPRINT_BLOCK = 1 << 16
"""Bytes read from each of the start, middle and end of a large file for its content fingerprint."""


def _sampled_hash(path: str, size: int) -> str:
    """Hash of the size and the first, middle and last :data:`FINGERPRINT_BLOCK` bytes (the whole file
    when it is at most three blocks)."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 3 * FINGERPRINT_BLOCK:
            h.update(f.read())
        else:
            for offset in (0, (size - FINGERPRINT_BLOCK) // 2, size - FINGERPRINT_BLOCK):
                f.seek(offset)
                h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()[:20]


def file_fingerprint(path: os.PathLike | str) -> List:
    """The identity of an input file (audio, a checkpoint): ``[absolute path, size, mtime_ns, content]``.

    ``content`` hashes the size and three 64 KiB blocks (start, middle, end; the whole file when it is
    smaller), so a file rewritten in place with the same length is a new input even when its modification
    time was kept (``cp -p``, ``rsync -t``), unless only bytes outside the sampled blocks changed and the
    time was kept too; a ``touch`` also counts as a change. Cost: BENCHMARKS.md, "input fingerprints".
    """
    absolute = os.path.abspath(path)  # not resolve(): it costs a system call per path component
    st = os.stat(absolute)
    return [absolute, st.st_size, st.st_mtime_ns, _sampled_hash(absolute, st.st_size)]


def func_name(func: Callable) -> str:
    """``"module:qualname"`` of a module-level function: its name inside stamp signatures.

    A function of a module run as ``python -m package.module`` is named by that module, not ``__main__``.
    """
    module = func.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return f"{module}:{func.__qualname__}"


@dataclass
class Unit:
    """One unit of work: ``func`` (a module-level function) called with ``kwargs``, producing ``outputs``.

    ``func`` must be importable by its module and name (it is pickled by reference for the
    worker processes); ``kwargs`` and ``inputs`` must be JSON-able.
    """

    name: str
    func: Callable
    kwargs: Dict[str, object]
    outputs: List[Path]
    inputs: Dict[str, object] = field(default_factory=dict)  # what the signature covers

    @property
    def signature(self) -> str:
        """Hash of what the unit does and reads (absolute paths: a moved folder is redone)."""
        return digest({"func": func_name(self.func), "kwargs": self.kwargs, "inputs": self.inputs})


def call(func: Callable, kwargs: Dict[str, object]):
    """Call ``func(**kwargs)`` (the entry point of worker processes)."""
    return func(**kwargs)


def read_stamp(path: os.PathLike | str) -> Optional[Dict]:
    """The stamp at ``path`` (a dict with at least ``"signature"``), or None if missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_stamp(path: os.PathLike | str, signature: str, **extra) -> None:
    """Write a stamp atomically: ``{"signature": signature, **extra}`` (JSON, ``str`` for other types)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as f:
        json.dump({"signature": signature, **extra}, f, indent=1, default=str)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_held_lock = None  # a worker's inherited copy of its run's folder lock: kept open for the worker's life


class InheritedFd:
    """A file descriptor that a spawned worker process inherits (the same open file, so the same
    ``flock``): pickled only while a process is being spawned (:mod:`multiprocessing` passes it on)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        popen = multiprocessing.context.get_spawning_popen()
        if popen is None:
            raise TypeError("an InheritedFd can only be passed to a process being spawned")
        return InheritedFd, (popen.duplicate_for_child(self.fd),)


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (its parent) ends, even by ``kill -9``: the kernel's
    parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``) and, where that is missing, a
    watchdog thread that polls the parent's pid."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def init_worker(parent_pid: Optional[int] = None, lock: Optional[InheritedFd] = None) -> None:
    """Set up a worker of :class:`Runner`'s pool: logging, death with the parent, the run's folder lock."""
    global _held_lock
    _held_lock = lock  # its fd stays open (never closed) until the worker exits: the lock is held until then
    if parent_pid is not None:
        die_with_parent(parent_pid)
    setup_logging()  # also quiets noisy third-party loggers


@contextlib.contextmanager
def environ_defaults(values: Dict[str, str]):
    """Temporarily set environment variables that are not already set (the user's settings win)."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, wait: bool = False) -> Iterator[int]:
    """Hold ``folder/.lock`` while ``what`` runs in ``folder`` (created if missing); yields the lock's fd.

    With ``wait``, block until the holder is done; otherwise a second holder gets a
    :class:`UserError` "another process is <what> in <folder>". Pass the fd to :class:`Runner`
    (``lock=``) so that its worker processes hold the lock too: it is free only when the last
    process of the run has ended (a ``kill -9`` of the parent included).
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UserError(f"another process is {what} in {folder} (or a worker of a killed run is still "
                            f"ending); wait for it to finish") from None
        yield f.fileno()


class Runner:
    """Runs units, skipping those whose stamp matches (see the module docstring).

    Parallel units go to a pool of ``jobs`` spawned worker processes, started on first use
    (each with ``cores // jobs`` BLAS/OpenMP threads) and kept until :meth:`close`. Workers die with
    this process (also on ``kill -9``) and hold ``lock`` (the fd from :func:`folder_lock`), if given,
    until they have ended.
    """

    def __init__(self, out_dir: Path, jobs: int = 1, force: bool = False, lock: Optional[int] = None):
        self.lock = lock
        self.stamp_dir = out_dir / ".stamps"
        self.jobs = max(1, jobs)
        self.force = force
        self.ran: List[str] = []
        self.skipped: List[str] = []
        self._pool = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(terminate=exc_type is not None)

    def close(self, terminate: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=terminate)
            self._pool = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:  # spawn: fork is unsafe after OpenMP/torch use in this process
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_worker,
                                             initargs=(os.getpid(), None if self.lock is None
                                                       else InheritedFd(self.lock)))
        return self._pool

    def stamp_path(self, unit: Unit) -> Path:
        return self.stamp_dir / (unit.name.replace("/", "__") + ".json")

    def is_done(self, unit: Unit) -> bool:
        if not all(Path(p).exists() for p in unit.outputs):
            return False
        stamp = read_stamp(self.stamp_path(unit))
        return stamp is not None and stamp.get("signature") == unit.signature

    def signature_of(self, name: str) -> Optional[str]:
        """Signature in the stamp of the unit ``name`` (None when it has none): an input of later steps."""
        stamp = read_stamp(self.stamp_dir / (name.replace("/", "__") + ".json"))
        return stamp.get("signature") if stamp else None

    def _finish(self, unit: Unit, seconds: float) -> None:
        write_stamp(self.stamp_path(unit), unit.signature, outputs=[str(p) for p in unit.outputs],
                    seconds=round(seconds, 3), inputs=unit.inputs, kwargs=unit.kwargs, func=func_name(unit.func))
        self.ran.append(unit.name)
        logger.info("done %s (%.1f s)", unit.name, seconds)

    def run(self, units: Sequence[Unit], parallel: bool = False) -> None:
        """Run the units that are not done; with ``parallel``, in the worker pool.

        ``parallel`` is ignored (units run in this process) for one unit or ``jobs=1``.
        """
        todo, done = [], []
        for unit in units:
            (done if not self.force and self.is_done(unit) else todo).append(unit)
        self.skipped += [u.name for u in done]
        step = units[0].name.split("/")[0] if units else ""
        if len(units) > 1 and len(done) == len(units):
            logger.info("skipping %s: all %d units already done", step, len(units))
        else:
            for unit in done:
                logger.info("skipping %s: already done", unit.name)
        self.stamp_dir.mkdir(parents=True, exist_ok=True)
        for unit in todo:  # a redo must not leave a stamp that matches half-new outputs
            with contextlib.suppress(FileNotFoundError):
                self.stamp_path(unit).unlink()
        if not (parallel and self.jobs > 1 and len(todo) > 1):
            for unit in todo:
                logger.info("running %s", unit.name)
                start = time.perf_counter()
                call(unit.func, unit.kwargs)
                self._finish(unit, time.perf_counter() - start)
            return
        logger.info("running %s in %d processes: %s", step, self.jobs, ", ".join(u.name for u in todo))
        start = time.perf_counter()
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        with environ_defaults({k: threads for k in THREAD_VARS}):  # inherited by workers started by submit()
            futures = {self.pool().submit(call, u.func, u.kwargs): u for u in todo}
        errors = []
        for fut in as_completed(futures):  # finished units get their stamps even if another one fails
            unit = futures[fut]
            try:
                fut.result()
            except BrokenProcessPool:
                errors.append((unit, UserError(
                    f"a worker process died while running {unit.name} (out of memory?); "
                    f"rerun with fewer --jobs")))
            except Exception as e:
                errors.append((unit, e))
            else:
                self._finish(unit, time.perf_counter() - start)
        for unit, e in errors:
            logger.error("%s failed: %s", unit.name, e)
        if errors:
            unit, e = errors[0]
            if isinstance(e, UserError):
                raise UserError(f"{len(errors)} unit(s) failed; first: {unit.name}: {e}")
            raise e
