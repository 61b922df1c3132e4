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
import glob
import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
import zipfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from fairseq_ext.checkpoint import register_safe_globals
from simple_kmeans.common import PipelineError, run_cli

logger = logging.getLogger("fairseq_ext.launch")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCHER_PID_VAR = "FAIRSEQ_EXT_LAUNCHER_PID"  # set for the workers that spawn_local starts


@dataclasses.dataclass
class DistEnv:
    """Where one worker sits in the job: global rank, world size, local rank, rendezvous URL."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str


@dataclasses.dataclass
class WorkerOptions:
    """What the launcher tells each worker (also pickled into hydra multirun jobs)."""

    env: Optional[DistEnv] = None
    backend: str = "auto"
    emulate_world_size: Optional[int] = None
    digest_dir: Optional[str] = None


# --------------------------------------------------------------------------- topology


def torchrun_env() -> Optional[DistEnv]:
    """The worker's place when started by torchrun / ``torch.distributed.run`` (else None)."""
    if not all(k in os.environ for k in TORCHRUN_VARS):
        return None
    return DistEnv(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                   local_rank=int(os.environ["LOCAL_RANK"]), init_method="env://")


def _slurm_int(*names: str) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    raise PipelineError(f"--slurm: ${names[0]} is not set: run this command through srun inside a SLURM job")


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
            raise PipelineError("--slurm: neither $MASTER_ADDR nor $SLURM_STEP_NODELIST is set")
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodes], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise PipelineError(f"--slurm: cannot expand the node list {nodes!r} with scontrol ({e}): "
                                f"set $MASTER_ADDR to the first node's address") from None
        host = out.stdout.split()[0]
    port = master_port or int(os.environ.get("MASTER_PORT") or 0)
    if not port:
        port = 20000 + _slurm_int("SLURM_JOB_ID", "SLURM_JOBID") % 20000
    return host, port


def slurm_env(master_port: Optional[int] = None) -> DistEnv:
    """One worker per SLURM task: rank ``$SLURM_PROCID`` of ``$SLURM_STEP_NUM_TASKS``."""
    host, port = slurm_master(master_port)
    return DistEnv(rank=_slurm_int("SLURM_PROCID"), world_size=_slurm_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
                   local_rank=_slurm_int("SLURM_LOCALID"), init_method=f"tcp://{host}:{port}")


# --------------------------------------------------------------------------- config changes


def _given(hydra_args: Iterable[str], key: str) -> bool:
    """Whether the command line sets ``key`` (``key=``, ``+key=``, ``++key=``)."""
    return any(a.lstrip("+").split("=", 1)[0] == key for a in hydra_args if "=" in a)


def configure_distributed(cfg, env: DistEnv, backend: str = "auto") -> None:
    """Fill ``cfg.distributed_training`` (and ``common.cpu``) for the worker ``env`` in place.

    ``backend``: ``auto`` (``gloo`` on CPU, ``nccl`` on GPU), ``gloo``, ``nccl`` or ``keep`` (the
    config's value).
    """
    from omegaconf import open_dict

    cpu = bool(cfg.common.cpu) or not torch.cuda.is_available()
    dt = cfg.distributed_training
    with open_dict(cfg):
        if cpu and not cfg.common.cpu:
            logger.info("CUDA is not available: training on CPU (common.cpu=true)")
            cfg.common.cpu = True
        if dt.distributed_world_size != env.world_size:
            logger.info("distributed_world_size=%d (the config says %d)", env.world_size, dt.distributed_world_size)
        dt.distributed_world_size = env.world_size
        dt.distributed_rank = env.rank
        dt.distributed_init_method = env.init_method
        dt.distributed_no_spawn = True
        dt.device_id = 0 if cpu else env.local_rank
        if backend != "keep":
            dt.distributed_backend = ("gloo" if cpu else "nccl") if backend == "auto" else backend
        if cpu and str(dt.ddp_backend) in ("c10d", "pytorch_ddp"):
            logger.warning("ddp_backend=%s does not work on CPU with fairseq 0.12.3 (it gives PyTorch DDP "
                           "device_ids); using no_c10d, which averages the same gradients", dt.ddp_backend)
            dt.ddp_backend = "no_c10d"


def emulate_world_size(cfg, target: int, world_size: int) -> None:
    """Multiply ``optimization.update_freq`` so that ``world_size`` processes make the batch of ``target``."""
    from omegaconf import open_dict

    if target < world_size or target % world_size:
        raise PipelineError(f"--emulate-world-size {target} must be a multiple of the world size ({world_size})")
    old = list(cfg.optimization.update_freq)
    with open_dict(cfg):
        cfg.optimization.update_freq = [int(u) * (target // world_size) for u in old]
    logger.info("emulating %d processes on %d: optimization.update_freq %s -> %s", target, world_size, old,
                list(cfg.optimization.update_freq))


def check_user_dir(cfg) -> None:
    """Default ``common.user_dir`` to this package; refuse another copy of it (fairseq would fail)."""
    from omegaconf import open_dict

    user_dir = cfg.common.user_dir
    ours = bool(user_dir) and os.path.basename(os.path.normpath(user_dir)) == "fairseq_ext"
    if not user_dir or (ours and not os.path.isdir(user_dir)):  # unset, or relative to the directory left by hydra
        with open_dict(cfg):
            cfg.common.user_dir = PACKAGE_DIR
        return
    if ours and os.path.realpath(user_dir) != os.path.realpath(PACKAGE_DIR):
        raise PipelineError(
            f"common.user_dir={user_dir} is another copy of fairseq_ext than the one running this launcher "
            f"({PACKAGE_DIR}): drop common.user_dir, or run the launcher from that tree (PYTHONPATH={os.path.dirname(os.path.normpath(user_dir))})")


def check_summable_criterion(cfg) -> None:
    """Multi-process CPU training needs a criterion whose logging outputs are plain sums."""
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.utils import import_user_module

    import_user_module(cfg.common)
    name = cfg.criterion._name if cfg.criterion is not None else None
    cls = CRITERION_REGISTRY.get(name)
    if cls is not None and not cls.logging_outputs_can_be_summed():
        hint = " (use criterion hubert_summable: the same loss)" if name == "hubert" else ""
        raise PipelineError(
            f"criterion {name} says its logging outputs cannot be summed: fairseq then gathers them with "
            f"all_gather_list, which needs CUDA, so multi-process CPU training would crash{hint}")


# --------------------------------------------------------------------------- resume guard


def is_complete_checkpoint(path: str) -> bool:
    """A torch zip archive with its central directory (a copy cut short has none)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80  # legacy (non-zip) torch pickle: cannot be checked cheaply


def resume_fallback(save_dir: str, suffix: str = "") -> Optional[str]:
    """The file to resume from when ``checkpoint_last{suffix}.pt`` exists but is incomplete.

    fairseq writes the first checkpoint of a save atomically but copies it (not atomically) to the
    others, ``checkpoint_last.pt`` included; a kill during that copy leaves a truncated file that
    stops every later resume. Returns None when there is nothing to fix, else the newest complete
    ``checkpoint*{suffix}.pt`` of ``save_dir`` (the copy's source).

    Raises:
        PipelineError: checkpoint_last is incomplete and no complete checkpoint is left.
    """
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    if not os.path.isfile(last) or is_complete_checkpoint(last):
        return None
    others = [p for p in glob.glob(os.path.join(glob.escape(save_dir), f"checkpoint*{suffix}.pt"))
              if os.path.abspath(p) != os.path.abspath(last) and os.path.isfile(p)]
    for path in sorted(others, key=os.path.getmtime, reverse=True):
        if is_complete_checkpoint(path):
            logger.warning("%s is incomplete (killed while fairseq copied it?): resuming from %s", last, path)
            return path
    raise PipelineError(f"{last} is incomplete (killed while it was written?) and {save_dir} holds no other complete "
                        f"checkpoint: move it away to start from scratch")


def guard_resume(cfg) -> None:
    """Point ``checkpoint.restore_file`` at a complete checkpoint when checkpoint_last.pt is cut short."""
    from omegaconf import open_dict

    ck = cfg.checkpoint
    if ck.restore_file != "checkpoint_last.pt" or getattr(cfg.distributed_training, "use_sharded_state", False):
        return
    fallback = resume_fallback(ck.save_dir, ck.checkpoint_suffix or "")
    if fallback is not None:
        with open_dict(cfg):
            ck.restore_file = os.path.abspath(fallback)


# --------------------------------------------------------------------------- digests


def tensors_digest(named: Iterable[Tuple[str, Any]]) -> str:
    """sha256 over ``(name, dtype, shape, bytes)`` of tensors (and ``repr`` of other values), by name."""
    h = hashlib.sha256()
    for name, value in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _flatten(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def trainer_digest(trainer) -> Dict[str, Any]:
    """Digests of a fairseq ``Trainer``'s parameters, buffers and optimizer state, and its update count."""
    model = trainer.get_model()
    params = list(model.named_parameters())
    buffers = list(model.named_buffers())
    return {
        "num_updates": int(trainer.get_num_updates()),
        "n_params": int(sum(p.numel() for _, p in params)),
        "params": tensors_digest(params),
        "buffers": tensors_digest(buffers),
        "buffers_by_name": {name: tensors_digest([(name, b)]) for name, b in buffers},
        "optimizer": tensors_digest(_flatten(trainer.optimizer.state_dict())),
    }


@contextlib.contextmanager
def recording_trainers() -> Iterator[List[Any]]:
    """Collect the ``Trainer`` objects that ``fairseq_cli.train.main`` builds inside the block.

    ``main`` keeps its trainer to itself; for the block, the name ``Trainer`` in
    ``fairseq_cli.train`` refers to a subclass that records each instance (fairseq's files are
    untouched, the name is restored afterwards).
    """
    import fairseq_cli.train as train_cli

    base_cls = train_cli.Trainer
    made: List[Any] = []

    class RecordingTrainer(base_cls):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    train_cli.Trainer = RecordingTrainer
    try:
        yield made
    finally:
        train_cli.Trainer = base_cls


def _write_json(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------- workers


def train(cfg, opts: WorkerOptions, backend_given: bool = False) -> None:
    """One worker: adjust the composed config, then fairseq's hydra training entry point."""
    from fairseq_cli.hydra_train import _hydra_main

    check_user_dir(cfg)
    register_safe_globals()  # also for runs whose ranks fairseq infers (SLURM, submitit)
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
        _write_json(os.path.join(opts.digest_dir, f"rank{rank}.json"), digest)
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
    if not _given(args, "hydra.job.name"):
        args.append("hydra.job.name=hydra_train")  # log file hydra_train.log, like fairseq-hydra-train
    if opts.env is not None and opts.env.rank > 0 and not _given(args, "hydra.output_subdir"):
        args.append("hydra.output_subdir=null")  # rank 0 writes .hydra/
    backend_given = _given(args, "distributed_training.distributed_backend")
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
            raise PipelineError("--max-restarts works on one node only: on SLURM, requeue the job instead")
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
                raise PipelineError(f"training failed ({failures}); see the workers' messages above") from None
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
        raise PipelineError("give fairseq-hydra-train's arguments after '--', at least --config-name NAME")
    nproc = torch.cuda.device_count() if nproc_per_node == "gpu" else int(nproc_per_node)
    if nproc < 1:
        raise PipelineError(f"--nproc-per-node must be >= 1 (got {nproc_per_node}; 'gpu' found no GPU)")
    digest_dir = os.path.abspath(dump_param_digest) if dump_param_digest else None
    opts = WorkerOptions(backend=backend, emulate_world_size=emulate_world_size, digest_dir=digest_dir)
    worker_args = [f"--backend={backend}"]
    if emulate_world_size:
        worker_args.append(f"--emulate-world-size={emulate_world_size}")
    if digest_dir:
        worker_args.append(f"--dump-param-digest={digest_dir}")

    env = torchrun_env()
    if (env is not None or slurm or nproc > 1) and ("-m" in hydra_args or "--multirun" in hydra_args):
        raise PipelineError("hydra's --multirun starts its own jobs (submitit: one per SLURM task): "
                            "use it without --nproc-per-node / --slurm / torchrun")
    if env is not None:  # a worker started by torchrun (ours or the user's)
        die_with_launcher()
        opts.env = env
        return run_hydra(hydra_args, opts)
    if slurm:
        tasks = _slurm_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
        nodes = _slurm_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES")
        if nproc > 1:  # one task per node starts the node's workers
            if tasks != nodes:
                raise PipelineError(f"--slurm --nproc-per-node {nproc} needs one SLURM task per node "
                                    f"({tasks} tasks on {nodes} nodes): use srun --ntasks-per-node 1")
            return spawn_local(nproc, worker_args, hydra_args, max_restarts, nnodes=nodes,
                               node_rank=_slurm_int("SLURM_NODEID"), master=slurm_master(master_port))
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
