"""Two-process CPU (gloo) training through fairseq's real trainer, started by fairseq_ext.launch.

The tiny disentangled HuBERT runs under the launcher's own torch-elastic spawn, PASE under two
SLURM tasks (srun's environment for two tasks on one node). Both must end with identical
parameters and optimizer state on both ranks (the launcher's --dump-param-digest), and rank 0's
checkpoint must hold exactly those parameters.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

from conftest import REPO
from test_dhubert_train import prepare_data

LAUNCH = [sys.executable, "-m", "fairseq_ext.launch"]
CPU = ["common.cpu=true", "common.fp16=false", "dataset.num_workers=0", "dataset.required_batch_size_multiple=1",
       "common.log_interval=1"]


def worker_env(**extra: str) -> Dict[str, str]:
    """The source tree first on the path (not an installed copy), one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "TORCHELASTIC_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def dhubert_args(paths: Dict[str, Path], run_dir: Path, max_update: int) -> List[str]:
    return ["--config-dir", str(REPO / "config" / "pretrain"), "--config-name", "dhubert_tiny", "+data=iter1",
            f"task.data={paths['data']}", f"task.label_dir={paths['labels']}", f"task.pitch_dir={paths['pitch']}",
            f"common.user_dir={REPO / 'fairseq_ext'}", *CPU, f"optimization.max_update={max_update}",
            "model.adv_warmup_updates=4", f"hydra.run.dir={run_dir}"]


def records(log: str, kind: str = "train_inner") -> List[Dict]:
    out = []
    for line in log.splitlines():
        m = re.search(r"\[" + kind + r"\]\[INFO\] - (\{.*\})\s*$", line)
        if m:
            out.append(json.loads(m.group(1)))
    return out


def read_digests(digest_dir: Path, world_size: int = 2) -> List[Dict]:
    return [json.loads((digest_dir / f"rank{r}.json").read_text()) for r in range(world_size)]


def checkpoint_state(path: Path) -> Dict:
    import fairseq_ext
    fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes

    return torch.load(path, map_location="cpu", weights_only=True)


def param_digest_of_checkpoint(path: Path, buffer_names: List[str]) -> str:
    from fairseq_ext.train_digest import tensors_digest

    state = checkpoint_state(path)
    return tensors_digest([(k, v) for k, v in state["model"].items() if k not in set(buffer_names)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: List[str], cwd: Path, env: Optional[Dict[str, str]] = None, timeout: float = 240) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env or worker_env(), capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log


def assert_ranks_identical(digests: List[Dict], num_updates: int) -> None:
    assert [d["rank"] for d in digests] == [0, 1] and all(d["world_size"] == 2 for d in digests)
    assert all(d["num_updates"] == num_updates for d in digests), digests
    assert digests[0]["n_params"] > 0
    assert digests[0]["params"] == digests[1]["params"]
    assert digests[0]["optimizer"] == digests[1]["optimizer"]


def test_dhubert_two_processes_gloo(demo_corpus, tmp_path):
    paths = prepare_data(demo_corpus, tmp_path / "data")
    run_dir, digest_dir = tmp_path / "run", tmp_path / "digest"
    log = run(LAUNCH + ["--nproc-per-node", "2", "--dump-param-digest", str(digest_dir), "--",
                        *dhubert_args(paths, run_dir, max_update=6)], cwd=tmp_path)
    assert "distributed init (rank 0): env://" in log and "distributed init (rank 1): env://" in log
    assert "distributed_world_size=2" in log or "'distributed_world_size': 2" in log
    inner = records(log)
    assert [int(r["num_updates"]) for r in inner] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["loss_spk"])) for r in inner)
    # statistics are summed over both ranks: each update sees (almost) the whole corpus of 12 clips
    assert sum(int(float(r["bsz"])) for r in inner[:2]) == 12

    digests = read_digests(digest_dir)
    assert_ranks_identical(digests, 6)
    ckpt = run_dir / "checkpoints" / "checkpoint_last.pt"
    assert param_digest_of_checkpoint(ckpt, list(digests[0]["buffers_by_name"])) == digests[0]["params"]


def test_pase_two_slurm_tasks_gloo(demo_manifest, tmp_path):
    lines = (demo_manifest / "train.tsv").read_text().splitlines()
    data = tmp_path / "manifest"
    data.mkdir()
    (data / "train.tsv").write_text("\n".join(lines) + "\n")
    (data / "valid.tsv").write_text("\n".join(lines[:5]) + "\n")
    run_dir, digest_dir = tmp_path / "run", tmp_path / "digest"
    port = free_port()
    cmd = LAUNCH + ["--slurm", "--dump-param-digest", str(digest_dir), "--",  # default --config-dir
                    "--config-name", "pase_tiny", f"task.data={data}", *CPU, "dataset.batch_size=4",
                    "optimization.max_update=4", f"hydra.run.dir={run_dir}"]
    procs = []
    for rank in range(2):  # what srun --ntasks 2 gives each task on one node
        env = worker_env(SLURM_JOB_ID="4242", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0",
                         SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_STEP_NODELIST="localhost",
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    assert f"distributed init (rank 1): tcp://127.0.0.1:{port}" in logs[1]
    inner = records(logs[0])
    assert [int(r["num_updates"]) for r in inner] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) for r in inner)

    digests = read_digests(digest_dir)
    assert_ranks_identical(digests, 4)
    # buffers are not averaged by fairseq's no_c10d DDP: only BatchNorm running statistics may differ
    # between ranks (rank 0's are saved); the target-normalisation statistics are all-reduced
    differ = {k for k, v in digests[0]["buffers_by_name"].items() if digests[1]["buffers_by_name"][k] != v}
    assert all(k.endswith(("running_mean", "running_var")) for k in differ), differ
    ckpt = run_dir / "checkpoints" / "checkpoint_last.pt"
    assert param_digest_of_checkpoint(ckpt, list(digests[0]["buffers_by_name"])) == digests[0]["params"]


def test_cpu_needs_summable_criterion(tmp_path):
    from omegaconf import OmegaConf

    from fairseq_ext.distributed_config import check_summable_criterion
    from fairseq_ext.base.errors import UserError

    cfg = OmegaConf.create({"common": {"user_dir": str(REPO / "fairseq_ext")}, "criterion": {"_name": "hubert"}})
    with pytest.raises(UserError, match="hubert_summable"):
        check_summable_criterion(cfg)
    for name in ("hubert_summable", "dhubert", "pase"):
        cfg.criterion._name = name
        check_summable_criterion(cfg)


def test_configure_distributed_on_cpu():
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    from fairseq_ext.distributed_config import configure_distributed, emulate_world_size
    from fairseq_ext.distributed_env import DistEnv

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.distributed_training.ddp_backend = "c10d"
    cfg.distributed_training.distributed_world_size = 32
    configure_distributed(cfg, DistEnv(rank=1, world_size=2, local_rank=1, init_method="env://"))
    dt = cfg.distributed_training
    if not torch.cuda.is_available():
        assert cfg.common.cpu and dt.distributed_backend == "gloo" and dt.device_id == 0
        assert dt.ddp_backend == "no_c10d"  # PyTorch DDP refuses device_ids for CPU modules
    assert (dt.distributed_world_size, dt.distributed_rank, dt.distributed_init_method) == (2, 1, "env://")
    assert dt.distributed_no_spawn
    emulate_world_size(cfg, 32, 2)
    assert list(cfg.optimization.update_freq) == [16]


def test_launcher_needs_hydra_arguments():
    from fairseq_ext.launch import main
    from fairseq_ext.base.errors import UserError

    with pytest.raises(UserError, match="--config-name"):
        main(nproc_per_node="2", hydra_args=["--", "task.data=/x"])
