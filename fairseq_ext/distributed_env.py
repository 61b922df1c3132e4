"""Where a training worker sits in a job: rank, world size, local rank and rendezvous, from torchrun or SLURM."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Optional, Tuple

from fairseq_ext.base.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass
class DistEnv:
    """Where one worker sits in the job: global rank, world size, local rank, rendezvous URL."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str


def torchrun_env() -> Optional[DistEnv]:
    """The worker's place when started by torchrun / ``torch.distributed.run`` (else None)."""
    if not all(k in os.environ for k in TORCHRUN_VARS):
        return None
    return DistEnv(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                   local_rank=int(os.environ["LOCAL_RANK"]), init_method="env://")


def slurm_int(*names: str) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    raise UserError(f"--slurm: ${names[0]} is not set: run this command through srun inside a SLURM job")


def slurm_master(master_port: Optional[int] = None) -> Tuple[str, int]:
    """Rendezvous host and port of a SLURM job step.

    Host: ``$MASTER_ADDR`` or the first node of ``$SLURM_STEP_NODELIST`` (``scontrol show
    hostnames``). Port: ``master_port``, ``$MASTER_PORT`` or ``20000 + job id % 20000`` (the same
    in every task, different for jobs sharing a node).
    """
    host = os.environ.get("MASTER_ADDR")
    if not host:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise UserError("--slurm: neither $MASTER_ADDR nor $SLURM_STEP_NODELIST is set")
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodes], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise UserError(f"--slurm: cannot expand the node list {nodes!r} with scontrol ({e}): "
                            f"set $MASTER_ADDR to the first node's address") from None
        host = out.stdout.split()[0]
    port = master_port or int(os.environ.get("MASTER_PORT") or 0)
    if not port:
        port = 20000 + slurm_int("SLURM_JOB_ID", "SLURM_JOBID") % 20000
    return host, port


def slurm_env(master_port: Optional[int] = None) -> DistEnv:
    """One worker per SLURM task: rank ``$SLURM_PROCID`` of ``$SLURM_STEP_NUM_TASKS``."""
    host, port = slurm_master(master_port)
    return DistEnv(rank=slurm_int("SLURM_PROCID"), world_size=slurm_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
                   local_rank=slurm_int("SLURM_LOCALID"), init_method=f"tcp://{host}:{port}")
