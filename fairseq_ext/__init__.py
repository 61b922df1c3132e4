"""fairseq-ext: a fairseq user-dir for self-supervised speech representation learning.

Layers, bottom up (imports point down only):

- :mod:`fairseq_ext.base`: errors, logging/CLI helpers, atomic writes, manifests, shards, bad-audio
  handling, resumable steps. Imports neither torch nor fairseq.
- :mod:`fairseq_ext.kmeans`, :mod:`fairseq_ext.label_quality`: k-means and label-quality metrics.
- the fairseq plugin: ``tasks/``, ``models/``, ``criteria/``, ``data/``, ``modules/`` and the
  tools around them (checkpoint loading, probe, launcher).

Importing this package is light: it registers nothing with fairseq. Registration happens when
fairseq loads the user dir (``fairseq-hydra-train --user-dir fairseq_ext`` imports ``tasks/``,
whose ``__init__`` registers every task, model and criterion), or explicitly with
:func:`register`; :func:`load_model` registers before it loads.
"""

from __future__ import annotations

from typing import Any

from fairseq_ext.paths import config_dir

__version__ = "0.1.0"


def register() -> None:
    """Register every task, model and criterion of this package with fairseq (imports torch and
    fairseq) and allow-list fairseq's pickled classes for ``torch.load``. Safe to call twice."""
    import fairseq_ext.tasks  # noqa: F401  (its __init__ imports and registers the whole plugin)


def load_model(ckpt_path: str, **kwargs: Any):
    """Register the plugin and load a checkpoint of this package or of fairseq: see
    :func:`fairseq_ext.checkpoint.load_model` for the arguments; returns ``(model, cfg, task)``."""
    from fairseq_ext.checkpoint import load_model as load

    return load(ckpt_path, **kwargs)


__all__ = ["config_dir", "load_model", "register", "__version__"]
