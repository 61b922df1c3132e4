"""A tiny, real fairseq HuBERT checkpoint, built in about a second.

The checkpoint is built programmatically from fairseq's own ``HubertPretrainingTask`` and
``HubertModel`` (randomly initialised, seeded) and saved in the layout ``fairseq-hydra-train``
writes (``cfg`` as a plain container of the full ``FairseqConfig``, ``model``, ``task_state``
holding the label ``Dictionary``, ``optimizer_history``, ``extra_state``), so that fairseq's
``checkpoint_utils.load_model_ensemble_and_task``, fairseq's ``dump_hubert_feature.py`` and
``fairseq_ext.load_model`` all load it. That is about five times faster than training one for
two updates with ``fairseq-hydra-train``. Tests, benchmarks and the speaker experiment's
"random HuBERT" input use it.

Usage::

    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint
    ckpt = make_tiny_hubert_checkpoint(tmp_path / "hubert.pt", label_rate=100, num_classes=10)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

TINY_CONV_LAYERS: str = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
"""Same kernels and strides as HuBERT Base (400-sample receptive field, stride 320), 32 channels."""

BASE_SIZE: Dict[str, Union[int, str]] = dict(
    encoder_layers=12, embed_dim=768, ffn_dim=3072, heads=12, final_dim=256, conv_pos=128,
    conv_pos_groups=16, conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
)
"""Keyword arguments of :func:`make_tiny_hubert_checkpoint` for a HuBERT Base-sized model."""


def make_tiny_hubert_checkpoint(
    path: Union[os.PathLike, str],
    label_rate: float = 100,
    num_classes: int = 10,
    *,
    extractor_mode: str = "default",
    normalize: bool = False,
    encoder_layers: int = 2,
    embed_dim: int = 64,
    ffn_dim: int = 128,
    heads: int = 2,
    conv_feature_layers: str = TINY_CONV_LAYERS,
    final_dim: int = 32,
    conv_pos: int = 16,
    conv_pos_groups: int = 4,
    seed: int = 0,
    data_dir: Optional[str] = None,
    user_dir: Optional[str] = None,
) -> Path:
    """Write a randomly initialised fairseq HuBERT checkpoint to ``path``.

    Args:
        path: output ``.pt`` file (parent folders are created).
        label_rate: ``model.label_rate`` / ``task.label_rate`` in Hz.
        num_classes: number of cluster labels in the pickled ``dict.km.txt`` dictionary
            (fairseq's Dictionary adds its 4 special symbols, as in real training).
        extractor_mode: ``"default"`` (GroupNorm over time in the first conv layer, HuBERT Base)
            or ``"layer_norm"`` (HuBERT Large).
        normalize: ``task.normalize`` (waveform layer norm before the model).
        encoder_layers, embed_dim, ffn_dim, heads: transformer size.
        conv_feature_layers: CNN description, fairseq's syntax.
        final_dim: projection size of the prediction head.
        conv_pos, conv_pos_groups: convolutional positional embedding (Base: 128, 16).
        seed: torch seed of the initialisation (the global RNG state is left untouched).
        data_dir: recorded ``task.data`` / ``task.label_dir`` (default: a folder that does not
            exist, as for a checkpoint copied from another machine).
        user_dir: recorded ``common.user_dir`` (e.g. a path that no longer exists).
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import torch
    from omegaconf import OmegaConf

    import fairseq_ext
    fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
    from fairseq.data import Dictionary
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

    path = Path(path)
    data_dir = data_dir or "/nonexistent/tiny_hubert_data"
    task_cfg = HubertPretrainingConfig(
        _name="hubert_pretraining", data=data_dir, label_dir=data_dir, labels=["km"],
        label_rate=float(label_rate), sample_rate=16000, normalize=normalize,
        max_sample_size=250000, min_sample_size=1000, random_crop=True, pad_audio=False,
    )
    model_cfg = HubertConfig(
        _name="hubert", label_rate=float(label_rate), extractor_mode=extractor_mode,
        encoder_layers=encoder_layers, encoder_embed_dim=embed_dim, encoder_ffn_embed_dim=ffn_dim,
        encoder_attention_heads=heads, conv_feature_layers=conv_feature_layers,
        final_dim=final_dim, conv_pos=conv_pos, conv_pos_groups=conv_pos_groups, untie_final_proj=True,
        layer_norm_first=extractor_mode == "layer_norm", feature_grad_mult=0.1,
        conv_bias=extractor_mode == "layer_norm", mask_prob=0.8, encoder_layerdrop=0.05,
        dropout_input=0.1, dropout_features=0.1,
    )
    dictionary = Dictionary()
    for i in range(num_classes):
        dictionary.add_symbol(str(i))

    task = HubertPretrainingTask(task_cfg)
    task.state.merge_state_dict({"dictionaries": [dictionary]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(model_cfg, task_cfg, [dictionary])

    cfg = OmegaConf.structured(FairseqConfig())
    cfg.model = OmegaConf.structured(model_cfg)
    cfg.task = OmegaConf.structured(task_cfg)
    cfg.common.cpu = True
    cfg.common.user_dir = user_dir
    cfg.criterion = {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                     "loss_weights": [10.0]}
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{
            "criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": None}, "num_updates": 0,
        }],
        "task_state": task.state_dict(),
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
