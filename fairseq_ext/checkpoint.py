"""Loading fairseq checkpoints of this package (and fairseq's own) on torch >= 2.6.

torch >= 2.6 unpickles with ``weights_only=True`` by default, and fairseq 0.12.3's
``checkpoint_utils.load_checkpoint_to_cpu`` does not opt out, so any checkpoint that pickles a
fairseq ``Dictionary`` (every HuBERT checkpoint does, in its task state) fails to load with
``UnpicklingError: Unsupported global``. Importing this module allow-lists the few classes such
checkpoints hold, which is what makes resume, ``load_model`` and feature dumping work.

Checkpoints written by ``fairseq-hydra-train`` record ``common.user_dir``; fairseq imports it
only on its command line, never when loading a checkpoint in Python, so :func:`load_model`
works when that folder no longer exists: it registers this package itself and clears the
recorded value.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import warnings
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


def _numpy_safe_globals() -> List[Any]:
    """numpy scalars/arrays that fairseq may pickle in ``extra_state`` (best metric values).

    Checkpoints written with numpy 1.x name them ``numpy.core.multiarray.*``, numpy 2
    ``numpy._core.multiarray.*``; both spellings are allow-listed.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    out: List[Any] = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name)
        out += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


def register_safe_globals() -> None:
    """Allow-list the classes that fairseq checkpoints pickle (idempotent).

    fairseq's ``Dictionary`` (task state of HuBERT checkpoints), ``argparse.Namespace``
    (``args`` of pre-hydra checkpoints), numpy scalars and arrays (metric values), and what
    fairseq pickles when rank 0 broadcasts a loaded checkpoint to the other ranks on resume
    (``Trainer.load_checkpoint`` -> ``broadcast_object``, unpickled with ``weights_only=True``:
    the omegaconf ``DictConfig`` and its node types).
    """
    from fairseq.data.dictionary import Dictionary

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads everything anyway
        add([Dictionary, argparse.Namespace] + _numpy_safe_globals() + _broadcast_safe_globals())


def _broadcast_safe_globals() -> list:
    """omegaconf containers and nodes, and fairseq's tensor placeholder (multi-process resume)."""
    import collections
    import inspect
    import typing

    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig, base, nodes

    node_types = [c for _, c in inspect.getmembers(nodes, inspect.isclass)
                  if issubclass(c, base.Node) and c.__module__ == nodes.__name__]
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, *node_types, typing.Any,
            dict, list, tuple, set, int, float, str, bool, collections.defaultdict, _TensorPlaceholder]


def unsafe_globals(ckpt_path: str) -> List[str]:
    """Names of the pickled globals of ``ckpt_path`` that ``weights_only`` loading refuses."""
    get = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if get is None:
        return []
    return list(get(ckpt_path))


def _check_torch_file(ckpt_path: str) -> None:
    """Refuse files that are neither a torch zip archive nor a legacy torch pickle."""
    if zipfile.is_zipfile(ckpt_path):
        return
    with open(ckpt_path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        raise CheckpointError(f"{ckpt_path} is a truncated or corrupt zip archive: copy it again")
    if len(head) < 2 or head[0] != 0x80:  # pickle protocol >= 2 marker of legacy torch files
        raise CheckpointError(
            f"{ckpt_path} is not a torch checkpoint (neither a zip archive nor a pickle)"
        )


@contextlib.contextmanager
def _full_unpickling() -> Iterator[None]:
    """Make ``torch.load`` calls without an explicit ``weights_only`` unpickle everything."""
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{key}.*")
            yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def load_model(
    ckpt_path: str,
    arg_overrides: Optional[Dict[str, Any]] = None,
    device: str | torch.device = "cpu",
    eval_mode: bool = True,
    trusted: bool = False,
) -> Tuple[torch.nn.Module, Any, Any]:
    """Load a checkpoint of this package or of fairseq in plain Python.

    Registers this package's tasks, models and criteria, allow-lists fairseq's pickled classes,
    and ignores the ``common.user_dir`` recorded at training time (it may not exist here).

    Args:
        ckpt_path: path of a fairseq checkpoint (``checkpoint_best.pt`` ...).
        arg_overrides: fairseq ``arg_overrides`` (for example ``{"data": "/new/manifest/dir"}``).
        device: where to put the model.
        eval_mode: call ``model.eval()``.
        trusted: unpickle everything the checkpoint holds (``weights_only=False``); only for
            files from a trusted source whose pickled classes are not allow-listed.
    Returns:
        ``(model, cfg, task)``.
    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist.
        CheckpointError: the file is not a loadable checkpoint (message says why).
    """
    from fairseq import checkpoint_utils

    from fairseq_ext import register

    register()

    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    _check_torch_file(ckpt_path)
    register_safe_globals()
    overrides: Dict[str, Any] = {"user_dir": None}
    overrides.update(arg_overrides or {})
    if trusted:
        logger.info("loading %s with full unpickling (trusted=True)", ckpt_path)
    ctx = _full_unpickling() if trusted else contextlib.nullcontext()
    try:
        with ctx:
            models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
                [ckpt_path], arg_overrides=overrides
            )
    except pickle.UnpicklingError as e:
        names = unsafe_globals(ckpt_path) if "Unsupported global" in str(e) else []
        if names:
            raise CheckpointError(
                f"checkpoint {ckpt_path} pickles classes that safe loading refuses: "
                f"{', '.join(names)}. If you trust the file, load it with trusted=True "
                f"(--trust-checkpoint on the command line)"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {ckpt_path}: {e}") from None
    except (RuntimeError, EOFError) as e:
        if "zip archive" in str(e) or isinstance(e, EOFError):
            raise CheckpointError(
                f"cannot read checkpoint {ckpt_path}: {e}: the file is truncated or corrupt"
            ) from None
        raise
    model = models[0].to(device)
    if eval_mode:
        model.eval()
    return model, cfg, task
