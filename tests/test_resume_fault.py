"""Faults during training: SIGKILL mid-run, then resume from checkpoint_last.pt.

Two CPU processes (gloo) train the tiny disentangled HuBERT through fairseq_ext.launch:

1. ``--max-restarts 1``: one worker is SIGKILLed after a checkpoint was saved; the launcher
   starts both workers again, they resume from checkpoint_last.pt (rank 0 loads, broadcasts) at
   the saved update with the optimizer state restored (Adam's step count) and finish with
   identical ranks.
2. The launcher itself is SIGKILLed: its workers must die with it (no orphan keeps training).
3. checkpoint_last.pt cut short (a kill during fairseq's copy): rerunning the command resumes
   from the newest complete checkpoint and finishes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from test_dhubert_train import prepare_data
from test_distributed import (LAUNCH, assert_ranks_identical, checkpoint_state, dhubert_args, read_digests, records,
                              run, worker_env)

FIRST_MAX, SECOND_MAX = 16, 40
SAVED = re.compile(r"Saved checkpoint \S+ \(epoch \d+ @ (\d+) updates")


def children(pid: int) -> List[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def saved_updates(ckpt: Path) -> int:
    return int(checkpoint_state(ckpt)["optimizer_history"][-1]["num_updates"])


def adam_steps(ckpt: Path) -> set:
    return {int(s["step"]) for s in checkpoint_state(ckpt)["last_optimizer_state"]["state"].values()}


def kill_after_save(cmd: List[str], cwd: Path, min_updates: int, target: str) -> Tuple[str, List[int], int]:
    """Run ``cmd``; once a checkpoint of ``min_updates`` or more is saved, SIGKILL one worker
    (``target="worker"``, then read on to the end) or the launcher (``"launcher"``). Returns
    (log, worker pids, updates of the checkpoint that triggered the kill)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: List[str] = []
    workers: List[int] = []
    trigger = -1
    try:
        for line in proc.stdout:
            lines.append(line)
            if trigger < 0:
                workers = children(proc.pid) or workers
                m = SAVED.search(line)
                if m and int(m.group(1)) >= min_updates:
                    trigger = int(m.group(1))
                    os.kill(workers[-1] if target == "worker" else proc.pid, signal.SIGKILL)
                    if target == "launcher":
                        break
        proc.wait(timeout=240)
    finally:
        if target == "launcher":  # give the workers a moment to follow their launcher
            deadline = time.time() + 20
            while any(alive(w) for w in workers) and time.time() < deadline:
                time.sleep(0.2)
        orphans = [w for w in workers if alive(w)]
        for w in orphans:
            os.kill(w, signal.SIGKILL)
        proc.kill()
    assert trigger >= 0, "".join(lines)[-5000:]
    if target == "worker":  # restarted, resumed and finished
        assert proc.returncode == 0, "".join(lines)[-5000:]
    return "".join(lines), orphans if target == "launcher" else workers, trigger


@pytest.fixture(scope="module")
def faults(demo_corpus, tmp_path_factory) -> Dict:
    tmp = tmp_path_factory.mktemp("fault")
    paths = prepare_data(demo_corpus, tmp / "data")
    run_dir = tmp / "run"
    out: Dict = {"tmp": tmp, "run_dir": run_dir}
    # 1. a worker dies; the launcher restarts both
    cmd1 = LAUNCH + ["--nproc-per-node", "2", "--max-restarts", "1", "--dump-param-digest", str(tmp / "digest1"),
                     "--", *dhubert_args(paths, run_dir, FIRST_MAX)]
    out["log1"], out["workers1"], out["trigger1"] = kill_after_save(cmd1, tmp, 4, "worker")
    out["adam1"] = adam_steps(run_dir / "checkpoints" / "checkpoint_last.pt")
    # 2. the launcher dies (training continues towards SECOND_MAX from FIRST_MAX)
    cmd2 = LAUNCH + ["--nproc-per-node", "2", "--dump-param-digest", str(tmp / "digest2"), "--",
                     *dhubert_args(paths, run_dir, SECOND_MAX)]
    out["log2"], out["orphans2"], out["trigger2"] = kill_after_save(cmd2, tmp, FIRST_MAX + 4, "launcher")
    out["at_kill2"] = saved_updates(run_dir / "checkpoints" / "checkpoint_last.pt")
    # 3. checkpoint_last.pt cut short, then the same command again
    ckpts = run_dir / "checkpoints"
    last = ckpts / "checkpoint_last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill during fairseq's copy to checkpoint_last leaves
    assert not zipfile.is_zipfile(last)
    fallback = max((p for p in ckpts.glob("checkpoint*.pt") if p.name != last.name), key=os.path.getmtime)
    out["fallback"], out["fallback_updates"] = fallback, saved_updates(fallback)
    out["log3"] = run(cmd2, cwd=tmp)
    return out


def test_worker_killed_then_restarted_resumes(faults):
    log, k = faults["log1"], faults["trigger1"]
    assert "restart 1 of 1, resuming from checkpoint_last.pt" in log
    loaded = re.findall(r"Loaded checkpoint checkpoints/checkpoint_last.pt \(epoch \d+ @ (\d+) updates\)", log)
    assert len(loaded) == 1 and k <= int(loaded[0]) < FIRST_MAX
    resumed = int(loaded[0])
    steps = [int(x["num_updates"]) for x in records(log)]
    assert steps[-(FIRST_MAX - resumed):] == list(range(resumed + 1, FIRST_MAX + 1)), steps
    assert "Loaded checkpoint" not in log.split("restart 1 of 1")[0]  # the first generation started fresh
    # Adam's per-parameter step counts run on from the checkpoint (a fresh optimizer: FIRST_MAX - resumed)
    assert faults["adam1"] == {FIRST_MAX}
    assert_ranks_identical(read_digests(faults["tmp"] / "digest1"), FIRST_MAX)


def test_workers_die_with_the_launcher(faults):
    assert re.search(rf"Loaded checkpoint \S+ \(epoch \d+ @ {FIRST_MAX} updates\)", faults["log2"])
    assert faults["orphans2"] == []
    # orphaned workers would have trained on (or finished) and saved later checkpoints
    assert faults["trigger2"] <= faults["at_kill2"] < SECOND_MAX
    assert "done training" not in faults["log2"]


def test_truncated_checkpoint_last_falls_back(faults):
    log, k = faults["log3"], faults["fallback_updates"]
    assert "checkpoint_last.pt is incomplete" in log
    assert re.search(rf"Loaded checkpoint \S*{faults['fallback'].name} \(epoch \d+ @ {k} updates\)", log)
    assert [int(x["num_updates"]) for x in records(log)] == list(range(k + 1, SECOND_MAX + 1))
    last = faults["run_dir"] / "checkpoints" / "checkpoint_last.pt"
    assert saved_updates(last) == SECOND_MAX and adam_steps(last) == {SECOND_MAX}
    assert_ranks_identical(read_digests(faults["tmp"] / "digest2"), SECOND_MAX)


def test_resume_fallback_choice(tmp_path):
    from fairseq_ext.resume_guard import resume_fallback
    from fairseq_ext.base.errors import UserError

    def write_zip(path: Path, mtime: float) -> None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"x" * 100)
        os.utime(path, (mtime, mtime))

    assert resume_fallback(str(tmp_path)) is None  # nothing to resume
    write_zip(tmp_path / "checkpoint_last.pt", 300)
    assert resume_fallback(str(tmp_path)) is None  # complete: fairseq resumes from it
    write_zip(tmp_path / "checkpoint_best.pt", 100)
    write_zip(tmp_path / "checkpoint_2_40.pt", 200)
    (tmp_path / "checkpoint_3_60.pt").write_bytes(b"PK\x03\x04 cut")  # newest, but incomplete too
    os.utime(tmp_path / "checkpoint_3_60.pt", (250, 250))
    (tmp_path / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 cut")
    assert resume_fallback(str(tmp_path)) == str(tmp_path / "checkpoint_2_40.pt")
    for name in ("checkpoint_best.pt", "checkpoint_2_40.pt"):
        (tmp_path / name).unlink()
    with pytest.raises(UserError, match="no other complete checkpoint"):
        resume_fallback(str(tmp_path))
