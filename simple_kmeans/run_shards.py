"""Usage: fairseq-ext-run-shards NSHARD [--jobs J] [--ranks 0-3,7] [--log-dir DIR] [--fail-fast] -- COMMAND...
       (or python scripts/run_shards.py ..., python -m simple_kmeans.run_shards ...)

Run COMMAND once per shard, J at a time, on this machine: the local counterpart of
scripts/slurm_array.sh. In each run, ``{rank}`` and ``{nshard}`` in the arguments are replaced by
the shard's rank and NSHARD, and the environment holds RANK=rank and WORLD_SIZE=NSHARD (with the
SLURM_ARRAY_* variables removed, so that they cannot take precedence), so the dumping scripts can
also be given ``env env``:

  fairseq-ext-run-shards 8 --jobs 4 -- fairseq-ext-dump-mfcc man/ train env env feat/
  fairseq-ext-run-shards 8 -- python -m simple_kmeans.dump_pitch_feature man/ train {nshard} {rank} pitch/
  fairseq-ext-run-shards 8 --ranks "$(fairseq-ext-status features man/ train 8 feat/ --todo)" -- ...

--jobs defaults to min(NSHARD, cores). Each run gets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS = max(1, cores // J) unless they are already set. With --log-dir, each shard's
stdout and stderr go to DIR/rank{R}.log; otherwise they are inherited (interleaved).
A failed shard does not stop the others (unless --fail-fast): at the end the failed ranks are
listed with their exit status and the --ranks option that redoes only them, and the exit status
is 2. Ctrl-C or SIGTERM terminates the running shards; the dumping scripts leave nothing that
looks complete, so a rerun redoes exactly those.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

from fairseq_ext.base.atomic import make_dirs
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("run_shards")

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
POLL_S = 0.05


def parse_ranks(spec: Optional[str], nshard: int) -> List[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (sbatch --array syntax without steps); None -> all ranks."""
    if spec is None:
        return list(range(nshard))
    ranks: List[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            lo, _, hi = part.partition("-")
            ranks += range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise UserError(f"--ranks {spec!r}: expected ranks like 0-3,7") from None
    bad = [r for r in ranks if not 0 <= r < nshard]
    if bad:
        raise UserError(f"--ranks {spec!r}: rank(s) {bad} not in [0, {nshard})")
    return sorted(set(ranks))


def shard_command(command: Sequence[str], rank: int, nshard: int) -> List[str]:
    """``command`` with ``{rank}`` and ``{nshard}`` replaced."""
    return [a.replace("{rank}", str(rank)).replace("{nshard}", str(nshard)) for a in command]


def shard_env(rank: int, nshard: int, threads: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of one run: RANK / WORLD_SIZE set, SLURM_ARRAY_* removed, thread counts defaulted."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_ARRAY_")}
    env.update(RANK=str(rank), WORLD_SIZE=str(nshard))
    for var in THREAD_VARS:
        env.setdefault(var, str(threads))
    return env


class _Terminated(Exception):
    pass


@contextlib.contextmanager
def _sigterm_raises():
    """In the main thread, turn SIGTERM into an exception so that running shards get terminated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(running: Dict[int, subprocess.Popen]) -> None:
    for proc in running.values():
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in running.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(nshard: int, command: Sequence[str], jobs: Optional[int] = None, ranks: Optional[str] = None,
         log_dir: Optional[str] = None, fail_fast: bool = False) -> Dict[int, int]:
    """Run ``command`` for each rank (see the module docstring); returns ``{rank: exit status}``.

    Raises:
        UserError: when a shard fails (after the others have finished).
    """
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("no COMMAND given: fairseq-ext-run-shards NSHARD -- COMMAND ARGS...")
    if nshard < 1:
        raise UserError(f"NSHARD must be >= 1, got {nshard}")
    todo = parse_ranks(ranks, nshard)
    if not todo:
        logger.info("no rank to run")
        return {}
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = make_dirs(log_dir) if log_dir else None
    logger.info("running %d shard(s) of %d, %d at a time: %s", len(todo), nshard, jobs,
                " ".join(shard_command(command, todo[0], nshard)))
    pending, running, status, started = list(todo), {}, {}, {}
    t0 = time.perf_counter()
    with _sigterm_raises():
        try:
            while pending or running:
                while pending and len(running) < jobs and not (fail_fast and any(status.values())):
                    rank = pending.pop(0)
                    out = open(logs / f"rank{rank}.log", "wb") if logs else None
                    try:
                        running[rank] = subprocess.Popen(shard_command(command, rank, nshard),
                                                         env=shard_env(rank, nshard, threads),
                                                         stdout=out, stderr=subprocess.STDOUT if out else None)
                    except OSError as e:
                        raise UserError(f"cannot start {command[0]!r}: {e}") from None
                    finally:
                        if out:
                            out.close()
                    started[rank] = time.perf_counter()
                for rank, proc in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[rank]
                    status[rank] = code
                    took = time.perf_counter() - started[rank]
                    if code == 0:
                        logger.info("rank %d finished in %.1f s", rank, took)
                    else:
                        logger.error("rank %d failed with exit status %d after %.1f s%s", rank, code, took,
                                     f" (log: {logs / f'rank{rank}.log'})" if logs else "")
                if fail_fast and any(status.values()) and not running:
                    break
                time.sleep(POLL_S)
        except (KeyboardInterrupt, _Terminated):
            logger.error("interrupted: stopping %d running shard(s)", len(running))
            _stop(running)
            raise UserError("interrupted; the interrupted shards are incomplete, rerun them") from None
    failed = sorted(r for r, c in status.items() if c != 0)
    not_run = sorted(pending)
    logger.info("%d of %d shard(s) succeeded in %.1f s", len(status) - len(failed), len(todo),
                time.perf_counter() - t0)
    if failed or not_run:
        redo = ",".join(map(str, failed + not_run))
        raise UserError(
            f"rank(s) {', '.join(f'{r} (exit {status[r]})' for r in failed)} failed"
            + (f"; not started: {', '.join(map(str, not_run))}" if not_run else "")
            + (f"; logs in {logs}" if logs else "") + f"; redo them with --ranks {redo}")
    return status


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s NSHARD [options] -- COMMAND [ARGS...]")
    parser.add_argument("nshard", type=int, help="number of shards")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="parallel runs (default: min(NSHARD, cores))")
    parser.add_argument("--ranks", default=None, help="only these ranks, e.g. 0-3,7 (default: all)")
    parser.add_argument("--log-dir", default=None, help="write each shard's output to DIR/rank{R}.log")
    parser.add_argument("--fail-fast", action="store_true", help="start no new shard after a failure")
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``NSHARD [options] -- COMMAND...``: everything after the first ``--`` is the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    run_cli(functools.partial(main, command=command), get_parser(), head)


if __name__ == "__main__":
    cli()
