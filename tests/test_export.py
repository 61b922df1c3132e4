"""fairseq-ext-export: hf (real transformers), s3prl (its converter's format), stock fairseq (fresh
interpreter without fairseq_ext), bad input. Tiny seeded checkpoints; every layer compared."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fairseq_ext.base.errors import UserError
from fairseq_ext.tiny_checkpoint import TINY_CONV_LAYERS, make_tiny_hubert_checkpoint

from fairseq_ext.export import cli, export

LENGTHS = (16000, 21111)  # two utterance lengths (not the exporter's own VERIFY_LENGTHS)
N_SPEAKERS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def make_tiny_dhubert_checkpoint(path: Path) -> Path:
    """A tiny ``dhubert`` checkpoint (speaker adversary + conditioning, pitch head) in training's layout."""
    import fairseq_ext
    from omegaconf import OmegaConf

    fairseq_ext.register()
    from fairseq.data import Dictionary

    from fairseq_ext.models.dhubert import DHubertConfig, DHubertModel
    from fairseq_ext.tasks.dhubert_pretraining import DHubertPretrainingConfig

    base = make_tiny_hubert_checkpoint(path.with_name("base.pt"))
    state = torch.load(base, weights_only=False)
    task_cfg = DHubertPretrainingConfig(_name="dhubert_pretraining", data="/nonexistent", labels=["km"],
                                        label_rate=100.0, load_speaker=True, load_pitch=True,
                                        pitch_dir="/nonexistent")
    cfg = DHubertConfig(_name="dhubert", label_rate=100.0, encoder_layers=3, encoder_embed_dim=64,
                        encoder_ffn_embed_dim=128, encoder_attention_heads=2, final_dim=32, conv_pos=16,
                        conv_pos_groups=4, conv_feature_layers=TINY_CONV_LAYERS, spk_layer=2, pitch_layer=1,
                        max_update=10, mask_seed=1)
    d = Dictionary()
    for i in range(10):
        d.add_symbol(str(i))
    torch.manual_seed(1)
    model = DHubertModel(cfg, task_cfg, [d], n_speakers=N_SPEAKERS)
    state["cfg"]["model"] = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    state["cfg"]["task"] = OmegaConf.to_container(OmegaConf.structured(task_cfg), resolve=True, enum_to_str=True)
    state["model"] = model.state_dict()
    state["task_state"] = {"dictionaries": [d], "speakers": [f"spk{i}" for i in range(N_SPEAKERS)]}
    torch.save(state, path)
    assert any(k.startswith("spk_head.") for k in state["model"])
    assert any(k.startswith("pitch_head.") for k in state["model"])
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_ckpts")
    return {
        "plain": make_tiny_hubert_checkpoint(root / "plain.pt", seed=3),
        "plain_ln": make_tiny_hubert_checkpoint(root / "ln.pt", extractor_mode="layer_norm", normalize=True,
                                                seed=4),
        "dhubert": make_tiny_dhubert_checkpoint(root / "dhubert.pt"),
    }


def utterances():
    g = torch.Generator().manual_seed(7)
    return [0.1 * torch.randn(1, n, generator=g) for n in LENGTHS]


def fairseq_states(model, wav):
    """``extract_features(output_layer=L)`` for L = 1..N, and the final output (``output_layer=None``)."""
    n = len(model.encoder.layers)
    with torch.no_grad():
        per_layer = [model.extract_features(wav, mask=False, output_layer=L)[0][0] for L in range(1, n + 1)]
        final = model.extract_features(wav, mask=False)[0][0]
    return per_layer + [final]


def source_model(ckpt):
    from fairseq_ext.checkpoint import load_model

    model, _, _ = load_model(str(ckpt))
    return model


@pytest.mark.parametrize("name", ["plain", "plain_ln", "dhubert"])
def test_hf_export_matches_every_layer(ckpts, tmp_path, name):
    import transformers  # requirements.txt; a missing package fails here, it does not skip

    out = tmp_path / "hf"
    result = export(str(ckpts[name]), str(out), "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert max(result["max_abs_diff"]) <= 1e-5
    dropped = result["dropped"]
    assert "label_embs_concat" in dropped and "final_proj.weight" in dropped
    if name == "dhubert":
        assert any(k.startswith("spk_head.") for k in dropped) and any(k.startswith("pitch_head.") for k in dropped)
        assert any(k.startswith("spk_cond.") for k in dropped)
    assert not [k for k in dropped if k.startswith(("encoder.", "feature_extractor.", "post_extract_proj"))]

    hf = transformers.HubertModel.from_pretrained(str(out)).eval()
    src = source_model(ckpts[name])
    n = len(src.encoder.layers)
    assert hf.config.num_hidden_layers == n
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["do_normalize"] is (name == "plain_ln")
    for wav in utterances():
        ref = fairseq_states(src, wav)
        with torch.no_grad():
            o = hf(wav, output_hidden_states=True)
        assert len(o.hidden_states) == n + 1
        got = [h[0] for h in o.hidden_states[1:]] + [o.last_hidden_state[0]]
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        assert diff <= 1e-5, (name, wav.shape, diff)


STOCK_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from fairseq import checkpoint_utils
    from fairseq.data.dictionary import Dictionary
    torch.serialization.add_safe_globals([Dictionary])  # torch >= 2.6 with fairseq 0.12 (docs/export.md)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([sys.argv[1]])
    m = models[0].eval()
    assert "fairseq_ext" not in sys.modules, "fairseq_ext was imported"
    g = torch.Generator().manual_seed(7)
    out = {"model": type(m).__module__ + "." + type(m).__name__, "names": [cfg.model._name, cfg.task._name]}
    arrays = {}
    for i, n in enumerate(%r):
        wav = 0.1 * torch.randn(1, n, generator=g)
        with torch.no_grad():
            for L in range(1, len(m.encoder.layers) + 1):
                arrays[f"u{i}_L{L}"] = m.extract_features(wav, mask=False, output_layer=L)[0][0].numpy()
            arrays[f"u{i}_final"] = m.extract_features(wav, mask=False)[0][0].numpy()
    np.savez(sys.argv[2], **arrays)
    print(out)
""") % (LENGTHS,)


def test_stock_fairseq_loads_fairseq_export(ckpts, tmp_path):
    out = tmp_path / "stock.pt"
    result = export(str(ckpts["dhubert"]), str(out), "fairseq")
    assert max(result["max_abs_diff"]) <= 1e-5
    assert any(k.startswith("spk_head.") for k in result["dropped"])
    feats = tmp_path / "feats.npz"
    # a fresh interpreter that cannot see this repository (cwd elsewhere, no PYTHONPATH, no user dir)
    proc = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, str(out), str(feats)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fairseq.models.hubert.hubert.HubertModel" in proc.stdout
    assert "['hubert', 'hubert_pretraining']" in proc.stdout
    got = np.load(feats)
    src = source_model(ckpts["dhubert"])
    for i, wav in enumerate(utterances()):
        ref = fairseq_states(src, wav)
        keys = [f"u{i}_L{L}" for L in range(1, len(ref))] + [f"u{i}_final"]
        diff = max(float(np.abs(a.numpy() - got[k]).max()) for a, k in zip(ref, keys))
        assert diff <= 1e-5, diff


def s3prl_merge_with_parent(dc, cfg: dict):
    """What s3prl's ``upstream.utils.merge_with_parent`` does: keep the dataclass's fields, build it."""
    assert type(cfg) is dict
    return dc(**{k: v for k, v in cfg.items() if k in dc.__dataclass_fields__})


def test_s3prl_export_has_the_converter_format(ckpts, tmp_path):
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    out = tmp_path / "s3prl.pt"
    result = export(str(ckpts["dhubert"]), str(out), "s3prl")
    assert max(result["max_abs_diff"]) <= 1e-5
    # s3prl's load_converted_model: a plain torch.load (weights_only on torch >= 2.6)
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert set(state) == {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"}
    assert type(state["task_cfg"]) is dict and type(state["model_cfg"]) is dict
    assert set(state["model_cfg"]) <= set(HubertConfig.__dataclass_fields__)
    assert set(state["task_cfg"]) <= set(HubertPretrainingConfig.__dataclass_fields__)
    assert state["model_cfg"]["_name"] == "hubert" and state["model_cfg"]["encoder_layers"] == 3
    assert state["dictionaries_symbols"] == [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(10)]]
    model = HubertModel(s3prl_merge_with_parent(HubertConfig, state["model_cfg"]),
                        s3prl_merge_with_parent(HubertPretrainingConfig, state["task_cfg"]),
                        state["dictionaries_symbols"])
    assert set(state["model_weight"]) == set(model.state_dict())  # exactly: s3prl loads strictly
    model.load_state_dict(state["model_weight"], strict=True)
    src = source_model(ckpts["dhubert"])
    for wav in utterances():
        diff = max(float((a - b).abs().max()) for a, b in zip(fairseq_states(src, wav),
                                                              fairseq_states(model.eval(), wav)))
        assert diff <= 1e-5


def test_non_hubert_checkpoint_names_supported_formats(ckpts, tmp_path, monkeypatch, caplog):
    import fairseq_ext.checkpoint as checkpoint
    from omegaconf import OmegaConf

    from fairseq_ext.models.pase import PaseConfig, PaseModel

    cfg = PaseConfig(sinc_filters=8, sinc_kernel_size=51, conv_channels=[8, 8, 8, 8, 8, 16, 16], emb_dim=16,
                     workers={"mfcc": {}})
    cfg.sample_rate = 16000
    pase = PaseModel.build_model(cfg)
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: (
        pase, OmegaConf.create({"model": {"_name": "pase"}, "task": {"_name": "pase_pretraining"}}), None))
    with pytest.raises(SystemExit) as e:
        cli([str(ckpts["plain"]), str(tmp_path / "hf"), "--to", "hf"])
    assert e.value.code == 2
    msg = caplog.text
    assert "'pase'" in msg and "hubert, dhubert, fine-tuned hubert_ctc" in msg and "Traceback" not in msg
    assert not (tmp_path / "hf").exists()


def test_unwritable_out_fails_before_loading(ckpts, tmp_path, monkeypatch):
    import fairseq_ext.export as ex

    def no_work(*a, **k):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(ex, "Source", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for to, out in (("hf", blocker / "hf"), ("fairseq", blocker / "m.pt")):
        with pytest.raises(UserError, match="not writable"):
            export(str(ckpts["plain"]), str(out), to)
    existing = tmp_path / "exists.pt"
    existing.write_text("x")
    with pytest.raises(UserError, match="--force"):
        export(str(ckpts["plain"]), str(existing), "s3prl")
