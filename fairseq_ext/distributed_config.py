"""Changes the launcher makes to a composed fairseq config: distributed settings, emulated world size,
user dir, and the CPU check on criteria."""

from __future__ import annotations

import logging
import os
from typing import Iterable

import torch

from fairseq_ext.distributed_env import DistEnv
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("fairseq_ext.launch")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def given_override(hydra_args: Iterable[str], key: str) -> bool:
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
        raise UserError(f"--emulate-world-size {target} must be a multiple of the world size ({world_size})")
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
        raise UserError(
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
        raise UserError(
            f"criterion {name} says its logging outputs cannot be summed: fairseq then gathers them with "
            f"all_gather_list, which needs CUDA, so multi-process CPU training would crash{hint}")
