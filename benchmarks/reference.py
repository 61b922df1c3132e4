"""Reference implementations to benchmark and verify against, loaded at run time (never copied).

- fairseq's own ``examples/hubert`` scripts ship inside the installed fairseq package;
  :func:`fairseq_example` imports one of them by path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path


def fairseq_examples_dir() -> Path:
    """``<site-packages>/fairseq/examples/hubert``."""
    import fairseq

    return Path(os.path.dirname(fairseq.__file__)) / "examples" / "hubert"


def _missing_attribute(module: str):
    """Module ``__getattr__`` whose attributes raise ImportError only when they are used."""

    def getattr_(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise ImportError(f"{module}.{attr} is a stub: {module} is not installed")

        return unavailable

    return getattr_


def fairseq_example(relpath: str, stub_modules: tuple = ()) -> types.ModuleType:
    """Import ``fairseq/examples/hubert/<relpath>`` as a module.

    Args:
        relpath: e.g. ``"simple_kmeans/learn_kmeans.py"``.
        stub_modules: module names to replace by empty stubs if they are not installed
            (e.g. ``("npy_append_array",)``), for scripts whose unused imports would fail.
    """
    path = fairseq_examples_dir() / relpath
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    for name in stub_modules:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.__getattr__ = _missing_attribute(name)  # lets `from stub import X` succeed
            sys.modules[name] = stub
    name = "fairseq_ref_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
