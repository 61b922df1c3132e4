"""Errors, logging and command-line plumbing shared by the label pipeline scripts."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence


LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class PipelineError(RuntimeError):
    """An error caused by the user's input or environment; printed without a traceback."""


def setup_logging(level: Optional[str] = None) -> None:
    """Configure root logging once (level from ``$LOGLEVEL``, default INFO) to stderr."""
    level = (level or os.environ.get("LOGLEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not any(getattr(h, "_fairseq_ext", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        handler._fairseq_ext = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def run_cli(main: Callable[..., object], parser, argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv`` with ``parser``, call ``main(**vars(args))``; user errors exit with status 2."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        main(**vars(args))
    except PipelineError as e:
        logging.getLogger(parser.prog).error("%s", e)
        sys.exit(2)


def progress(iterable=None, **kwargs):
    """tqdm progress bar on stderr, disabled when stderr is not a terminal unless $FAIRSEQ_EXT_PROGRESS=1."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("FAIRSEQ_EXT_PROGRESS") == "1")
    kwargs.setdefault("disable", disable)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def load_script(path: os.PathLike | str, name: str):
    """Import the script ``name``.py that sits next to ``path`` (scripts/ is not a package), e.g.
    ``load_script(__file__, "demo_pretrain")``; returns the module."""
    file = Path(path).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"fairseq_ext_script_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

