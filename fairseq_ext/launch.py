"""Usage: python -m fairseq_ext.launch [--nproc-per-node N] [--slurm] [options] -- <fairseq-hydra-train arguments>

Run ``fairseq-hydra-train`` (fairseq's ``fairseq_cli.hydra_train``) on one process, several
processes of one machine, or every task of a SLURM job step, on GPUs (NCCL) or CPUs (gloo),
with the ``distributed_training.*`` settings each process needs filled in.

  # one machine, 8 GPUs (or 2 CPU processes: gloo is picked when CUDA is absent or common.cpu=true)
  python -m fairseq_ext.launch --nproc-per-node 8 -- --config-dir config/pretrain \\
      --config-name dhubert_base_librispeech +data=iter1 task.data=... task.label_dir=...
  # several machines: torchrun starts the workers, each worker is this module
  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
      -m fairseq_ext.launch -- --config-name dhubert_base_librispeech ...
  # SLURM: one srun task per process (or one per node with --nproc-per-node)
  srun --ntasks-per-node 8 python -m fairseq_ext.launch --slurm -- --config-name ...

Each worker fills in, once hydra has composed the config: distributed_world_size,
distributed_rank, distributed_init_method (env:// under torchrun, tcp://first-node:port under
SLURM), distributed_no_spawn, device_id (local rank on GPUs) and distributed_backend (nccl on
GPUs, gloo on CPUs). On CPUs also common.cpu=true and ddp_backend no_c10d instead of c10d (which
fairseq 0.12.3 cannot run on CPU), and a stop with a message for a criterion whose logging outputs
cannot be summed (fairseq would gather them with CUDA-only all_gather_list). fairseq's launch
inference (torch.cuda.device_count()) is skipped; no file of fairseq is changed. Every run also
gets common.user_dir / --config-dir defaults (this package), a resume guard for a truncated
checkpoint_last.pt, and the options below. See docs/distributed.md.
"""


from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import warnings
from typing import List, Optional, Tuple

import torch

from fairseq_ext import register
from fairseq_ext.distributed_config import (
    given_override, check_summable_criterion, check_user_dir, configure_distributed, emulate_world_size,
)
from fairseq_ext.distributed_env import (
    DistEnv, slurm_int, slurm_env, slurm_master, torchrun_env,
)
from fairseq_ext.resume_guard import guard_resume
from fairseq_ext.train_digest import (
    write_json, recording_trainers, trainer_digest,
)
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("fairseq_ext.launch")

LAUNCHER_PID_VAR = "FAIRSEQ_EXT_LAUNCHER_PID"  # set for the workers that spawn_local starts


@dataclasses.dataclass
class WorkerOptions:
    """What the launcher tells each worker (also pickled into hydra multirun jobs)."""

    env: Optional[DistEnv] = None
    backend: str = "auto"
    emulate_world_size: Optional[int] = None
    digest_dir: Optional[str] = None


# --------------------------------------------------------------------------- workers


def train(cfg, opts: WorkerOptions, backend_given: bool = False) -> None:
    """One worker: adjust the composed config, then fairseq's hydra training entry point."""
    from fairseq_cli.hydra_train import _hydra_main

    check_user_dir(cfg)
    register()  # fairseq skips a user dir that is already imported (this module's package)
    env = opts.env
    if env is not None:
        configure_distributed(cfg, env, "keep" if backend_given else opts.backend)
        if env.world_size > 1 and cfg.common.cpu:
            check_summable_criterion(cfg)
    if opts.emulate_world_size:
        emulate_world_size(cfg, opts.emulate_world_size, int(cfg.distributed_training.distributed_world_size))
    guard_resume(cfg)

    ctx = recording_trainers() if opts.digest_dir else contextlib.nullcontext([])
    with ctx as trainers:
        _hydra_main(cfg)
    if opts.digest_dir:
        if not trainers:
            raise RuntimeError("fairseq_cli.train.main built no Trainer: nothing to digest")
        rank = env.rank if env is not None else 0
        digest = {"rank": rank, "world_size": env.world_size if env is not None else 1, **trainer_digest(trainers[-1])}
        write_json(os.path.join(opts.digest_dir, f"rank{rank}.json"), digest)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _option(args: List[str], *names: str) -> Optional[str]:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def run_hydra(hydra_args: List[str], opts: WorkerOptions) -> None:
    """Compose the config from ``hydra_args`` exactly as ``fairseq-hydra-train`` does and train."""
    import fairseq
    import hydra
    from fairseq.dataclass.initialize import hydra_init

    args = list(hydra_args)
    if _option(args, "--config-dir", "-cd") is None:
        from fairseq_ext.paths import config_dir

        args = ["--config-dir", str(config_dir("pretrain"))] + args
    if not given_override(args, "hydra.job.name"):
        args.append("hydra.job.name=hydra_train")  # log file hydra_train.log, like fairseq-hydra-train
    if opts.env is not None and opts.env.rank > 0 and not given_override(args, "hydra.output_subdir"):
        args.append("hydra.output_subdir=null")  # rank 0 writes .hydra/
    backend_given = given_override(args, "distributed_training.distributed_backend")
    hydra_init(_option(args, "--config-name", "-cn") or "config")

    def hydra_task(cfg) -> None:
        train(cfg, opts, backend_given)

    with warnings.catch_warnings():  # version_base 1.1 = fairseq-hydra-train's behaviour (chdir to the run dir)
        warnings.filterwarnings("ignore", message=".*version_base.*")
        entry = hydra.main(config_path=os.path.join(os.path.dirname(fairseq.__file__), "config"),
                           config_name="config", version_base="1.1")(hydra_task)
    argv = sys.argv
    sys.argv = [argv[0]] + args
    try:
        entry()
    finally:
        sys.argv = argv


def die_with_launcher() -> None:
    """Linux: a worker of ``spawn_local`` is killed when its launcher dies, even by SIGKILL.

    torch's elastic agent starts workers in their own sessions, so a launcher killed outright
    (OOM killer, ``kill -9``, a lost node's supervisor) would leave them training and writing
    checkpoints next to the restarted job.
    """
    launcher = os.environ.get(LAUNCHER_PID_VAR)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(launcher):  # the launcher died before prctl
        os._exit(1)


def spawn_local(nproc: int, worker_args: List[str], hydra_args: List[str], max_restarts: int = 0,
                nnodes: int = 1, node_rank: int = 0, master: Optional[Tuple[str, int]] = None) -> None:
    """Start ``nproc`` workers (this module) with ``torch.distributed.run`` (torchrun's engine).

    One node: standalone rendezvous on a free local port; after a failure the whole launch is
    repeated (a fresh rendezvous store: torch 2.13's in-place elastic restart hands gloo workers
    the addresses of the killed ones), up to ``max_restarts`` times, and the workers resume from
    ``checkpoint_last.pt``. Several nodes (SLURM, one task per node): static rendezvous at
    ``master``, no restarts (requeue the job instead).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = [f"--nproc-per-node={nproc}", "--max-restarts=0"]
    if master is None:
        argv.append("--standalone")
    else:
        if max_restarts:
            raise UserError("--max-restarts works on one node only: on SLURM, requeue the job instead")
        argv += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master[0]}",
                 f"--master-port={master[1]}"]
    argv += ["--module", "fairseq_ext.launch", *worker_args, "--", *hydra_args]
    os.environ[LAUNCHER_PID_VAR] = str(os.getpid())  # the agent runs in this process
    for attempt in range(max_restarts + 1):
        try:
            torchrun.run(torchrun.parse_args(argv))
            return
        except ChildFailedError as e:
            failures = ", ".join(f"rank {r}: exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
            if attempt == max_restarts:
                raise UserError(f"training failed ({failures}); see the workers' messages above") from None
            logger.warning("training failed (%s): restart %d of %d, resuming from checkpoint_last.pt", failures,
                           attempt + 1, max_restarts)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc-per-node", default="1",
                        help="processes per node, or 'gpu' (one per visible GPU); ignored inside torchrun")
    parser.add_argument("--slurm", action="store_true",
                        help="take rank / world size from SLURM (run through srun: one task per process, or one "
                             "task per node with --nproc-per-node)")
    parser.add_argument("--master-port", type=int, default=None,
                        help="with --slurm: rendezvous port (default $MASTER_PORT or 20000 + job id %% 20000)")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="one node: after a worker fails, start all workers again (up to this many times); "
                             "they resume from checkpoint_last.pt")
    parser.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto",
                        help="torch.distributed backend: auto = gloo on CPU, nccl on GPU "
                             "(a distributed_training.distributed_backend=... override wins)")
    parser.add_argument("--emulate-world-size", type=int, default=None,
                        help="multiply optimization.update_freq so that the batch matches this many processes "
                             "(e.g. 32 for the HuBERT Base recipe)")
    parser.add_argument("--dump-param-digest", default=None, metavar="DIR",
                        help="after training, every rank writes DIR/rank<R>.json: update count and sha256 of its "
                             "parameters, buffers and optimizer state")
    parser.add_argument("hydra_args", nargs=argparse.REMAINDER,
                        help="after '--': fairseq-hydra-train's arguments (--config-dir, --config-name, overrides)")
    return parser


def main(nproc_per_node: str = "1", slurm: bool = False, master_port: Optional[int] = None, max_restarts: int = 0,
         backend: str = "auto", emulate_world_size: Optional[int] = None, dump_param_digest: Optional[str] = None,
         hydra_args: Optional[List[str]] = None) -> None:
    """Launch (or, inside torchrun / srun, be) the training workers; see the module docstring."""
    hydra_args = list(hydra_args or [])
    if hydra_args[:1] == ["--"]:
        hydra_args = hydra_args[1:]
    if not any(_option(hydra_args, n) is not None for n in ("--config-name", "-cn")):
        raise UserError("give fairseq-hydra-train's arguments after '--', at least --config-name NAME")
    nproc = torch.cuda.device_count() if nproc_per_node == "gpu" else int(nproc_per_node)
    if nproc < 1:
        raise UserError(f"--nproc-per-node must be >= 1 (got {nproc_per_node}; 'gpu' found no GPU)")
    digest_dir = os.path.abspath(dump_param_digest) if dump_param_digest else None
    opts = WorkerOptions(backend=backend, emulate_world_size=emulate_world_size, digest_dir=digest_dir)
    worker_args = [f"--backend={backend}"]
    if emulate_world_size:
        worker_args.append(f"--emulate-world-size={emulate_world_size}")
    if digest_dir:
        worker_args.append(f"--dump-param-digest={digest_dir}")

    env = torchrun_env()
    if (env is not None or slurm or nproc > 1) and ("-m" in hydra_args or "--multirun" in hydra_args):
        raise UserError("hydra's --multirun starts its own jobs (submitit: one per SLURM task): "
                        "use it without --nproc-per-node / --slurm / torchrun")
    if env is not None:  # a worker started by torchrun (ours or the user's)
        die_with_launcher()
        opts.env = env
        return run_hydra(hydra_args, opts)
    if slurm:
        tasks = slurm_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
        nodes = slurm_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES")
        if nproc > 1:  # one task per node starts the node's workers
            if tasks != nodes:
                raise UserError(f"--slurm --nproc-per-node {nproc} needs one SLURM task per node "
                                f"({tasks} tasks on {nodes} nodes): use srun --ntasks-per-node 1")
            return spawn_local(nproc, worker_args, hydra_args, max_restarts, nnodes=nodes,
                               node_rank=slurm_int("SLURM_NODEID"), master=slurm_master(master_port))
        opts.env = slurm_env(master_port)
        return run_hydra(hydra_args, opts)
    if int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1) > 1:
        logger.warning("running in a SLURM step of %s tasks without --slurm: every task trains on its own",
                       os.environ["SLURM_STEP_NUM_TASKS"])
    if nproc == 1:
        return run_hydra(hydra_args, opts)
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        logger.warning("%d processes for %d GPUs: NCCL needs one GPU per process (common.cpu=true trains on CPU)",
                       nproc, torch.cuda.device_count())
    spawn_local(nproc, worker_args, hydra_args, max_restarts)


def cli(argv: Optional[List[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
