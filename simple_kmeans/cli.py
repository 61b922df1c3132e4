"""Loading a sibling script of scripts/ as a module (scripts/ is not a package)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def load_script(path: os.PathLike | str, name: str):
    """Import the script ``name``.py that sits next to ``path`` (scripts/ is not a package), e.g.
    ``load_script(__file__, "demo_pretrain")``; returns the module."""
    file = Path(path).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"fairseq_ext_script_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

