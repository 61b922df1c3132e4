"""Where this package's hydra configs live, in a source checkout and once installed."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def config_dir(group: str = "pretrain") -> Path:
    """Folder to pass as ``fairseq-hydra-train --config-dir``: ``pretrain``, ``speaker``, ``kws`` or
    ``downstream`` (phone recognition on a frozen upstream: ``pr_tiny``, ``pr``).

    Installed packages carry the configs as ``fairseq_ext/config``; a source checkout has them
    at the repository's top-level ``config/``.
    """
    for root in (_HERE / "config", _HERE.parent / "config"):
        if (root / group).is_dir():
            return root / group
    raise FileNotFoundError(f"no config group {group!r} under {_HERE / 'config'} or {_HERE.parent / 'config'}")
