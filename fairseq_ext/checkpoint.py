"""Loading fairseq checkpoints of this package (and fairseq's own) on torch >= 2.6.

torch >= 2.6 unpickles with ``weights_only=True`` by default, and fairseq 0.12.3's
``checkpoint_utils.load_checkpoint_to_cpu`` does not opt out, so any checkpoint that pickles a
fairseq ``Dictionary`` (every HuBERT checkpoint does, in its task state) fails to load with
``UnpicklingError: Unsupported global``. Importing this module allow-lists the few classes such
checkpoints hold, which is what makes resume, ``load_model`` and feature dumping work.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


def register_safe_globals() -> None:
    """Allow-list the classes that fairseq checkpoints pickle (idempotent)."""
    from fairseq.data.dictionary import Dictionary

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads everything anyway
        add([Dictionary, argparse.Namespace])


def load_model(
    ckpt_path: str,
    arg_overrides: Optional[Dict[str, Any]] = None,
    device: str | torch.device = "cpu",
    eval_mode: bool = True,
) -> Tuple[torch.nn.Module, Any, Any]:
    """Load a checkpoint of this package or of fairseq in plain Python.

    Registers this package's tasks, models and criteria, allow-lists fairseq's pickled classes,
    and ignores the ``common.user_dir`` recorded at training time (it may not exist here).

    Args:
        ckpt_path: path of a fairseq checkpoint (``checkpoint_best.pt`` ...).
        arg_overrides: fairseq ``arg_overrides`` (for example ``{"data": "/new/manifest/dir"}``).
        device: where to put the model.
        eval_mode: call ``model.eval()``.
    Returns:
        ``(model, cfg, task)``.
    """
    import fairseq_ext  # noqa: F401  (registers the plugin)
    from fairseq import checkpoint_utils

    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    register_safe_globals()
    overrides = {"user_dir": None}
    overrides.update(arg_overrides or {})
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([ckpt_path], arg_overrides=overrides)
    model = models[0].to(device)
    if eval_mode:
        model.eval()
    return model, cfg, task
