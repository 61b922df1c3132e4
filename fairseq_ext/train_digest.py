"""Digests of a fairseq trainer's parameters, buffers and optimizer state (to compare ranks and runs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Tuple

import torch


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


def write_json(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
