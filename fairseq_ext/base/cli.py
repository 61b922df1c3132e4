"""Logging, progress bars and the command-line runner shared by every command of the package."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

from fairseq_ext.base.errors import UserError


LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
QUIET_LOGGERS = {
    "faiss.loader": logging.WARNING,  # "Could not load library with AVX512 support ... ModuleNotFoundError" at INFO
    "fairseq.tasks.text_to_speech": logging.WARNING,  # "Please install tensorboardX" on every fairseq import
}
"""Third-party loggers whose INFO messages look like failures; :func:`setup_logging` raises their level."""
QUIET_WARNINGS = [
    (UserWarning, r"pkg_resources is deprecated"),  # pyworld's import, on every pitch command (harmless)
]
"""Third-party Python warnings (category, message regex) that say nothing to our users."""


def quiet_loggers() -> None:
    """Raise the level of :data:`QUIET_LOGGERS` and ignore :data:`QUIET_WARNINGS` (unless ``$LOGLEVEL`` is
    DEBUG): third-party noise that looks like failure."""
    if os.environ.get("LOGLEVEL", "").upper() == "DEBUG":
        return
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def setup_logging(level: Optional[str] = None) -> None:
    """Configure root logging once (level from ``$LOGLEVEL``, default INFO) to stderr; quiet noisy loggers."""
    level = (level or os.environ.get("LOGLEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not any(getattr(h, "_fairseq_ext", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        handler._fairseq_ext = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    quiet_loggers()


def run_cli(main: Callable[..., object], parser, argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv`` with ``parser``, call ``main(**vars(args))``; user errors exit with status 2."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        main(**vars(args))
    except UserError as e:
        logging.getLogger(parser.prog).error("%s", e)
        sys.exit(2)


def progress(iterable=None, **kwargs):
    """tqdm progress bar on stderr, disabled when stderr is not a terminal unless $FAIRSEQ_EXT_PROGRESS=1."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("FAIRSEQ_EXT_PROGRESS") == "1")
    kwargs.setdefault("disable", disable)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
