"""Tests of dhubert's configuration: defaults = the shipped adversary, the deprecated grl_* keys,
and the key list that lets the command line set every dhubert key."""

from __future__ import annotations

import pytest

import fairseq_ext
fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
from fairseq_ext.models.dhubert import DHubertConfig
from test_dhubert_model import build, task_and_batch  # noqa: F401  (fixtures)


def test_defaults_are_the_shipped_adversary():
    """The dataclass defaults are what the shipped configs use (docs/dhubert.md: measured best)."""
    cfg = DHubertConfig()
    assert (cfg.spk_unit, cfg.spk_adversary, cfg.spk_condition, cfg.spk_memory_size) == ("frame", "confusion", True, 4096)
    assert (cfg.spk_pooling, cfg.spk_frames, cfg.spk_standardize, cfg.pitch_mode) == ("mean", "all", True, "auxiliary")
    assert (cfg.adv_schedule, cfg.adv_weight, cfg.adv_warmup_updates, cfg.seeded_masks) == ("dann", 1.0, 0, True)


def test_deprecated_grl_keys_still_work_and_warn(task_and_batch, caplog):  # noqa: F811
    task, _ = task_and_batch
    with caplog.at_level("WARNING", logger="fairseq_ext.models.dhubert"):
        model = build(task, adv_schedule="dann", grl_schedule="linear", grl_lambda_max=0.3, grl_warmup_updates=10)
    assert (model.adv_schedule, model.adv_weight, model.adv_horizon) == ("linear", 0.3, 10)
    for old, new in (("grl_schedule", "adv_schedule"), ("grl_lambda_max", "adv_weight"),
                     ("grl_warmup_updates", "adv_warmup_updates")):
        assert f"model.{old} is deprecated: use model.{new}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fairseq_ext.models.dhubert"):
        build(task)
    assert "deprecated" not in caplog.text
    with pytest.raises(ValueError, match="adv_schedule"):
        build(task, grl_schedule="cosine")


def test_command_line_can_set_every_dhubert_key():
    """config/pretrain/model/dhubert.yaml lists every dhubert key (hydra only overrides keys that
    exist) and sets none of them (``???``: the dataclass default applies), and both size configs
    include it."""
    import dataclasses

    from fairseq.models.hubert.hubert import HubertConfig
    from omegaconf import OmegaConf

    from conftest import REPO

    keys = OmegaConf.load(REPO / "config" / "pretrain" / "model" / "dhubert.yaml")
    ours = {f.name for f in dataclasses.fields(DHubertConfig)} - {f.name for f in dataclasses.fields(HubertConfig)}
    assert set(keys) == ours - {"max_update"}
    assert all(OmegaConf.is_missing(keys, k) for k in keys)
    for name in ("dhubert_tiny", "dhubert_base_librispeech"):
        cfg = OmegaConf.load(REPO / "config" / "pretrain" / f"{name}.yaml")
        assert list(cfg.defaults) == [{"model": "dhubert"}, "_self_"], name
