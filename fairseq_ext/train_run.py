"""One way to run ``fairseq-hydra-train``: a resumable, skippable training run in its own folder.

:func:`train` runs ``fairseq-hydra-train`` as a subprocess in ``run_dir`` (output appended to
``run_dir/train.log``) until ``run_dir/checkpoints/checkpoint_last.pt`` holds ``max_update``
updates: it skips a finished run, resumes an interrupted or shorter one from
``checkpoint_last.pt`` (fairseq's own resume), and refuses (or, with ``restart=True``, starts
over) when the checkpoint was made with other settings or inputs than this run's (its identity,
kept in the stamp ``run_dir/.stamps/train.json``). :func:`parse_log` reads fairseq's JSON log
records (``train_inner``, ``train``, ``valid``) back from the log; while the run goes,
:func:`run_logged` follows them into a progress bar over updates (loss, valid loss, rate) on a
terminal (or with ``$FAIRSEQ_EXT_PROGRESS=1``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.steps import digest, folder_lock, read_stamp, write_stamp

logger = logging.getLogger("train_run")

LOG_RECORD = re.compile(r"\[(train_inner|train|valid)\]\[INFO\] - (\{.*\})\s*$")
CPU_OVERRIDES = ["common.cpu=true", "common.fp16=false", "dataset.num_workers=0",
                 "dataset.required_batch_size_multiple=1"]
"""Hydra overrides that run the shipped configs on CPU."""
USER_DIR = Path(__file__).resolve().parent
"""This package's folder: ``common.user_dir`` of every run."""


@dataclass
class TrainResult:
    """What :func:`train` did: the checkpoint, its updates and the log's records."""

    ckpt: Path
    updates: int
    records: List[Dict] = field(default_factory=list)
    seconds: float = 0.0  # training time of all sessions of this run
    skipped: bool = False  # already finished: nothing ran
    log: Optional[Path] = None
    command: List[str] = field(default_factory=list)

    def last(self, kind: str) -> Optional[Dict]:
        """The last record of ``kind`` (``train_inner``, ``train`` or ``valid``), or None."""
        found = [r for r in self.records if r["kind"] == kind]
        return found[-1] if found else None


def parse_log(text: str) -> List[Dict]:
    """fairseq's JSON log records of a training log, each with ``kind`` = train_inner | train | valid."""
    out = []
    for line in text.splitlines():
        m = LOG_RECORD.search(line)
        if m:
            out.append({"kind": m.group(1), **json.loads(m.group(2))})
    return out


def _progress_fields(record: Dict) -> Dict[str, str]:
    """A log record's fields for the progress bar: ``num_updates``, ``loss`` (or ``valid_loss``).

    fairseq prefixes the keys of ``train`` and ``valid`` records with their kind (``valid_loss``).
    The bar's own rate (updates per second since the start) stands for the speed.
    """
    kind = record["kind"]
    plain = {k[len(kind) + 1:] if k.startswith(kind + "_") else k: v for k, v in record.items()}
    out = {k: str(plain[k]) for k in ("num_updates",) if k in plain}
    if "loss" in plain:
        out["valid_loss" if kind == "valid" else "loss"] = str(plain["loss"])
    return out


def run_logged(cmd: Sequence[str], cwd: Path, env: Optional[Dict[str, str]], log, log_path: Path, done: int,
               max_update: int, timeout: Optional[float], name: str, poll: float = 1.0) -> Optional[int]:
    """Run ``cmd`` with its output appended to ``log`` (open on ``log_path``) and show its progress.

    The JSON records fairseq writes to the log are followed as they appear: a bar over updates
    (``done`` to ``max_update``, with its rate and time left) showing the last loss and valid loss (see
    :func:`fairseq_ext.base.cli.progress`: shown when stderr is a terminal or
    ``$FAIRSEQ_EXT_PROGRESS=1``). Returns the exit status, or None when ``timeout`` seconds passed
    (the process is then killed). Ctrl-C stops the process too.
    """
    from fairseq_ext.base.cli import progress

    reader = open(log_path, "r", errors="replace")
    reader.seek(0, os.SEEK_END)
    deadline = None if timeout is None else time.monotonic() + timeout
    pending, fields = "", {}
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    bar = progress(total=max_update, initial=done, desc=name, unit="upd", leave=True)
    try:
        while True:
            try:
                returncode: Optional[int] = proc.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                returncode = None
            pending += reader.read()
            *lines, pending = pending.split("\n")
            for record in parse_log("\n".join(lines)):
                fields.update(_progress_fields(record))
                updates = min(int(float(fields.pop("num_updates", bar.n))), max_update)
                bar.update(max(updates - bar.n, 0))
                bar.set_postfix(fields, refresh=False)
            bar.refresh()
            if returncode is not None:
                return returncode
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return None
    except BaseException:  # Ctrl-C or an error here: never leave the trainer running
        proc.kill()
        proc.wait()
        raise
    finally:
        bar.close()
        reader.close()


def checkpoint_updates(ckpt: Path) -> int:
    """Number of updates stored in a fairseq checkpoint (``optimizer_history[-1]["num_updates"]``)."""
    import torch

    from fairseq_ext.checkpoint import register_safe_globals

    register_safe_globals()
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        return int(state["optimizer_history"][-1]["num_updates"])
    except Exception as e:  # a half-written or foreign file: say which and what to do
        raise UserError(f"cannot read the update count of {ckpt} ({type(e).__name__}: {e}): remove it or "
                        f"rerun with --force") from None


def hydra_train_command(config_dir: Path, config_name: str, overrides: Sequence[str]) -> List[str]:
    """``fairseq-hydra-train --config-dir ... --config-name ... OVERRIDES`` (the module when not on PATH)."""
    exe = shutil.which("fairseq-hydra-train")
    head = [exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    return head + ["--config-dir", str(config_dir), "--config-name", config_name, *overrides]


def epoch_schedule(max_update: int, updates_per_epoch: int) -> List[str]:
    """Log about 50 times, validate and save about 5 times per run, per epoch (fairseq always does both
    at the end)."""
    epochs = max(1, math.ceil(max_update / max(updates_per_epoch, 1)))
    every = max(1, epochs // 5)
    return [f"common.log_interval={max(1, max_update // 50)}", f"dataset.validate_interval={every}",
            f"checkpoint.save_interval={every}"]


def update_schedule(max_update: int, n_valid: int = 4) -> List[str]:
    """Validate and save every ``max_update // n_valid`` updates (and at the end), never per epoch."""
    every = max(1, max_update // n_valid)
    return [f"dataset.validate_interval_updates={every}",
            f"checkpoint.save_interval_updates={every}", "dataset.validate_interval=1000000",
            "checkpoint.save_interval=1000000", "checkpoint.keep_interval_updates=1",
            "checkpoint.no_epoch_checkpoints=true", f"common.log_interval={max(1, max_update // 20)}"]


def train(run_dir: os.PathLike | str, config_dir: os.PathLike | str, config_name: str, overrides: Sequence[str],
          max_update: int, identity: object = None, schedule: Sequence[str] = (), threads: Optional[int] = None,
          timeout: Optional[float] = None, force: bool = False, restart: bool = False,
          name: Optional[str] = None) -> TrainResult:
    """Run, resume or skip ``fairseq-hydra-train`` until ``checkpoint_last.pt`` holds ``max_update`` updates.

    Args:
        run_dir: the run's folder (``hydra.run.dir``): ``checkpoints/``, ``train.log``, ``.stamps/``.
        config_dir, config_name: the hydra config (e.g. ``fairseq_ext.paths.config_dir("pretrain")``).
        overrides: hydra overrides; with ``identity`` (file digests, settings) they are the run's
            identity. They must not set ``optimization.max_update`` or ``hydra.run.dir`` (added here).
        max_update: updates to reach; a larger value continues a finished run.
        schedule: overrides that are not part of the identity (intervals and ramps derived from
            ``max_update``), so that a larger ``max_update`` continues the run.
        threads: ``OMP_NUM_THREADS`` (and MKL's) of the training process; None inherits.
        timeout: seconds; a run that takes longer stops with a :class:`UserError` (rerun to resume).
        force: start over (the run folder is removed first).
        restart: a checkpoint of another identity is removed and the run starts over, instead of
            a :class:`UserError`.
        name: the run's name in messages (default: the folder's name).
    """
    run_dir = Path(run_dir)
    name = name or run_dir.name
    sig = digest({"config": config_name, "overrides": list(overrides), "inputs": identity})
    with folder_lock(run_dir.parent, f"preparing {run_dir.name}", wait=True):
        if force and run_dir.exists():
            logger.info("--force: removing %s", run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, "training"):
        return _train_locked(run_dir, Path(config_dir), config_name, [*overrides, *schedule], max_update, sig,
                             threads, timeout, restart, name)


def _train_locked(run_dir: Path, config_dir: Path, config_name: str, overrides: List[str], max_update: int,
                  sig: str, threads: Optional[int], timeout: Optional[float], restart: bool,
                  name: str) -> TrainResult:
    ckpt = run_dir / "checkpoints" / "checkpoint_last.pt"
    stamp_path = run_dir / ".stamps" / "train.json"
    stamp = read_stamp(stamp_path) or {}
    if ckpt.exists() and stamp.get("signature") != sig:
        if not restart:
            raise UserError(f"{ckpt} was trained on other inputs or settings than this run's: remove {run_dir} "
                            f"or rerun with --force to start over")
        logger.info("%s: %s was trained with other settings: starting over", name, ckpt)
        shutil.rmtree(run_dir / "checkpoints")
        (run_dir / "train.log").unlink(missing_ok=True)
        stamp = {}
    log_path = run_dir / "train.log"
    done = checkpoint_updates(ckpt) if ckpt.exists() else 0
    seconds = float(stamp.get("seconds", 0.0)) if stamp.get("signature") == sig else 0.0
    cmd = hydra_train_command(config_dir, config_name, [*overrides, f"optimization.max_update={max_update}",
                                                        f"hydra.run.dir={run_dir}"])
    skipped = done >= max_update
    if skipped:
        logger.info("skipping %s: %s holds %d updates (--max-update %d)", name, ckpt, done, max_update)
    else:
        write_stamp(stamp_path, sig, seconds=seconds, command=cmd)  # the identity, so that an interrupted run resumes
        env = dict(os.environ)
        repo = str(USER_DIR.parent)  # a checkout's packages win over a stale installed copy
        env["PYTHONPATH"] = os.pathsep.join([repo] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        logger.info("%s: training %s from update %d to %d (log: %s)", name, config_name, done, max_update, log_path)
        start = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(("\n" if log.tell() else "") + f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            returncode = run_logged(cmd, run_dir, env, log, log_path, done, max_update, timeout, name)
            if returncode is None:
                raise UserError(f"{name}: training did not finish in {timeout:.0f} s; rerun to resume "
                                f"from {ckpt}")
        seconds += time.perf_counter() - start
        write_stamp(stamp_path, sig, seconds=round(seconds, 1), command=cmd)
        if returncode != 0:
            tail = log_path.read_text().splitlines()[-25:]
            raise UserError(f"{name}: fairseq-hydra-train failed with status {returncode}; last lines "
                            f"of {log_path}:\n" + "\n".join(tail))
        done = checkpoint_updates(ckpt) if ckpt.exists() else 0
        if done < max_update:
            raise UserError(f"{name}: training stopped at {done} of {max_update} updates; see {log_path}")
    records = parse_log(log_path.read_text()) if log_path.exists() else []
    return TrainResult(ckpt=ckpt, updates=done, records=records, seconds=seconds, skipped=skipped, log=log_path,
                       command=cmd)
