"""Registry of PASE workers.

A worker lives in one file of this package and registers itself with a decorator (its base
classes and batch type are in :mod:`fairseq_ext.modules.pase_workers.base`)::

    from fairseq_ext.modules.pase_workers import register_worker
    from fairseq_ext.modules.pase_workers.base import RegressorConfig, RegressorWorker

    @register_worker("lps", dataclass=LPSConfig)
    class LPSWorker(RegressorWorker): ...

Every module of this package is imported on first use, so adding a worker here is one new
file plus an entry under ``model.workers`` in the config. Workers defined outside the package
are loaded from the files listed in ``model.worker_files`` (see :func:`import_worker_file`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import pkgutil
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type

from fairseq_ext.modules.pase_workers.base import PaseWorker, WorkerConfig

logger = logging.getLogger(__name__)

WORKER_REGISTRY: Dict[str, Tuple[Type[PaseWorker], Type[WorkerConfig]]] = {}
_BUILTINS_IMPORTED = False


def register_worker(name: str, dataclass: Type[WorkerConfig] = WorkerConfig) -> Callable:
    """Class decorator registering a :class:`PaseWorker` subclass under ``name``."""

    def wrap(cls: Type[PaseWorker]) -> Type[PaseWorker]:
        if not issubclass(cls, PaseWorker):
            raise TypeError(f"worker {name!r}: {cls.__name__} must subclass PaseWorker")
        if not (dataclasses.is_dataclass(dataclass) and issubclass(dataclass, WorkerConfig)):
            raise TypeError(f"worker {name!r}: its config must be a dataclass subclassing WorkerConfig")
        old = WORKER_REGISTRY.get(name)
        if old is not None and old[0].__qualname__ != cls.__qualname__:
            raise ValueError(f"worker name {name!r} is already registered by {old[0].__module__}.{old[0].__name__}")
        cls.registry_name = name
        WORKER_REGISTRY[name] = (cls, dataclass)
        return cls

    return wrap


def _import_builtin_workers() -> None:
    global _BUILTINS_IMPORTED
    if _BUILTINS_IMPORTED:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _BUILTINS_IMPORTED = True


def import_worker_file(path: str) -> None:
    """Import a Python file that registers workers (``model.worker_files``); idempotent."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"worker file {path} (model.worker_files) does not exist")
    mod_name = "fairseq_ext_pase_worker_" + os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(mod_name)
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "")) == path:
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)


def known_workers() -> Tuple[str, ...]:
    """Sorted names of every registered worker."""
    _import_builtin_workers()
    return tuple(sorted(WORKER_REGISTRY))


def make_worker_config(name: str, entry: Optional[Mapping[str, Any]]) -> Tuple[str, WorkerConfig]:
    """Validate a ``model.workers`` entry; returns ``(worker type, config)``."""
    _import_builtin_workers()
    entry = dict(entry or {})
    wtype = entry.get("type") or name
    if wtype not in WORKER_REGISTRY:
        raise ValueError(
            f"unknown PASE worker {wtype!r} (model.workers.{name}); known workers: "
            f"{', '.join(known_workers())}. A worker defined in your own file must be listed in "
            f"model.worker_files")
    _, cfg_cls = WORKER_REGISTRY[wtype]
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(entry) - valid)
    if unknown:
        raise ValueError(
            f"model.workers.{name}: unknown option(s) {', '.join(unknown)} for worker type {wtype!r}; "
            f"valid options: {', '.join(sorted(valid))}")
    return wtype, cfg_cls(**entry)


def build_worker(name: str, entry: Optional[Mapping[str, Any]], emb_dim: int, sample_rate: int,
                 hop: int) -> PaseWorker:
    """Build the worker configured by ``model.workers.<name> = entry``."""
    wtype, cfg = make_worker_config(name, entry)
    cls, _ = WORKER_REGISTRY[wtype]
    return cls(name, cfg, emb_dim=emb_dim, sample_rate=sample_rate, hop=hop)


__all__ = ["WORKER_REGISTRY", "register_worker", "import_worker_file", "known_workers", "make_worker_config",
           "build_worker"]
