"""Every upstream kind of the encoder interface (HuBERT, PASE, PASE+, the log-Mel front-end, named or
from a speaker checkpoint): shapes, ``num_frames`` = the real output length over many lengths,
batched = one at a time, registry errors; and the speaker task trained on a PASE upstream."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from fairseq_ext.base.errors import UserError
from fairseq_ext.encoder import (
    NAMED_UPSTREAMS, UPSTREAMS, Upstream, load_upstream, parse_upstream_name, register_named_upstream,
    register_upstream, upstream_for_model,
)

REPO = Path(__file__).resolve().parents[1]

TINY_PASE = dict(sinc_filters=8, sinc_kernel_size=51, conv_channels=[8, 8, 8, 8, 8, 16, 16], emb_dim=12)


def make_tiny_pase_checkpoint(path: Path, dense_skips: bool = False, rnn_type: str = "none", seed: int = 0) -> Path:
    """A randomly initialised ``pase`` checkpoint in fairseq-hydra-train's layout (about a second).

    BatchNorm running statistics are randomised too, so that eval mode is not the identity."""
    from omegaconf import OmegaConf

    import fairseq_ext
    fairseq_ext.register()
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq_ext.models.pase import PaseConfig, PaseModel
    from fairseq_ext.tasks.pase_pretraining import PasePretrainingConfig, PasePretrainingTask

    task_cfg = PasePretrainingConfig(_name="pase_pretraining", data="/nonexistent/pase_data", train_subset="train",
                                     seed=1)
    cfg = OmegaConf.structured(FairseqConfig())
    cfg.task = OmegaConf.structured(task_cfg)
    model_cfg = OmegaConf.structured(PaseConfig(
        _name="pase", dense_skips=dense_skips, rnn_type=rnn_type, rnn_hidden_dim=16,
        workers={"lps": {"n_fft": 256, "win_length": 256, "hidden_dim": 8}}, **TINY_PASE))
    cfg.model = model_cfg
    cfg.model.sample_rate = 16000
    cfg.criterion = {"_name": "pase"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PaseModel.build_model(cfg.model, PasePretrainingTask(cfg.task))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    state = {"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
             "model": model.state_dict(), "criterion": None,
             "optimizer_history": [{"criterion_name": "PaseCriterion", "optimizer_name": "FairseqAdam",
                                    "lr_scheduler_state": {"best": None}, "num_updates": 0}],
             "task_state": {}, "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
             "last_optimizer_state": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Dict[str, str]:
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    d = tmp_path_factory.mktemp("upstreams")
    return {"hubert": str(make_tiny_hubert_checkpoint(d / "hubert.pt")),
            "pase": str(make_tiny_pase_checkpoint(d / "pase.pt")),
            "pase_plus": str(make_tiny_pase_checkpoint(d / "pase_plus.pt", dense_skips=True, rnn_type="gru"))}


# kind -> (spec, expected kind class name, num_layers, dim, frame shift)
KINDS = {
    "hubert": ("hubert", "HubertUpstream", 2, 64, 320),
    "pase": ("pase", "PaseUpstream", 0, 12, 160),
    "pase_plus": ("pase_plus", "PaseUpstream", 7, 12, 160),
    "logmel": ("logmel:n_mels=24,n_fft=400", "LogMelUpstream", 0, 24, 160),
    "logmel_odd": ("logmel:n_mels=8,n_fft=301,hop_length=100,trainable_mel=true", "LogMelUpstream", 0, 8, 100),
}


def _load(kind: str, ckpts: Dict[str, str]) -> Upstream:
    spec = KINDS[kind][0]
    return load_upstream(ckpts.get(spec, spec))


def _real_frames(up: Upstream, piece: torch.Tensor) -> int:
    """Frames the wrapped module itself outputs for one unpadded piece (not sliced by num_frames)."""
    from fairseq_ext.upstreams.logmel import LogMelUpstream
    from fairseq_ext.upstreams.pase import PaseUpstream

    if isinstance(up, PaseUpstream):
        try:
            return up.model(piece[None])[0].shape[-1]  # PaseEncoder: (1, emb_dim, T)
        except RuntimeError:  # under one hop, a strided block gets no input step: no frame
            assert len(piece) < up.frame_shift
            return 0
    assert isinstance(up, LogMelUpstream)
    return up.model(piece[None])[0].shape[1]  # LogMelFrontend: (1, T, n_mels)


# HuBERT's num_frames against its real CNN: tests/test_encoder.py::test_num_frames_is_the_real_models_output_length
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "hubert"])
def test_shapes_and_num_frames_over_many_lengths(kind, ckpts):
    up = _load(kind, ckpts)
    _, cls_name, num_layers, dim, shift = KINDS[kind]
    assert type(up).__name__ == cls_name
    assert (up.num_layers, up.dim, up.frame_shift) == (num_layers, dim, shift)
    assert not up.model.training
    g = torch.Generator().manual_seed(1)
    lengths = [1, 99, 100, 101, 159, 160, 161, 199, 200, 299, 300, 301, 319, 320, 321, 399, 400, 401, 479, 480,
               481, 639, 640, 1111, 3200, 4001]
    pieces = [0.1 * torch.randn(n, generator=g) for n in lengths]
    layers = list(range(up.num_layers + 1))
    with torch.no_grad():
        out = up.encode(pieces, layers)
        for n, piece in zip(lengths, pieces):
            real = _real_frames(up, piece)
            assert up.num_frames(n) == real, (kind, n)
            for layer in layers:
                assert out[layer][lengths.index(n)].shape == (real, dim), (kind, layer, n)
            if real:
                states, mask = up(piece[None])
                assert mask is None and len(states) == up.num_layers + 1
                assert all(s.shape == (1, real, dim) for s in states), (kind, n)


@pytest.mark.parametrize("kind", list(KINDS))
def test_batched_equals_one_at_a_time(kind, ckpts):
    up = _load(kind, ckpts)
    g = torch.Generator().manual_seed(2)
    lengths = [4000, 2345, 1601, 100]
    wav = torch.zeros(len(lengths), max(lengths))
    mask = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for b, n in enumerate(lengths):
        wav[b, :n] = 0.1 * torch.randn(n, generator=g)
        mask[b, :n] = False
    with torch.no_grad():
        states, fmask = up(wav, mask)
    frames = [up.num_frames(n) for n in lengths]
    assert fmask.tolist() == [[t >= f for t in range(max(frames))] for f in frames]
    assert len(states) == up.num_layers + 1
    for b, (n, f) in enumerate(zip(lengths, frames)):
        with torch.no_grad():
            alone, _ = up(wav[b:b + 1, :n])
        for layer, (s, a) in enumerate(zip(states, alone)):
            assert a.shape[1] == f
            torch.testing.assert_close(s[b, :f], a[0], atol=1e-5, rtol=0, msg=f"{kind} layer {layer} item {b}")
            assert not s[b, f:].any()
    if up.num_layers:  # states differ from each other (each is a real, distinct state)
        assert not torch.allclose(states[0], states[-1])


def test_pase_states_match_the_encoder(ckpts):
    """The last PASE(+) state is the encoder's own embedding; PASE+'s skip states sum into it."""
    from fairseq_ext import load_model

    for name in ("pase", "pase_plus"):
        model, _, _ = load_model(ckpts[name])
        model.eval()
        up = upstream_for_model(model)
        wav = 0.1 * torch.randn(1, 3300, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            states, _ = up(wav)
            ref, _ = model.extract_features(wav)
        assert ref.shape == (1, 3300 // 160, 12)
        torch.testing.assert_close(states[-1], ref, atol=1e-6, rtol=0)


def test_speaker_model_front_end_is_an_upstream():
    """A trained speaker/KWS model (input_type=audio) reads as a logmel upstream of its own front-end."""
    from fairseq_ext.models.conformer_speaker import ConformerSpeakerConfig, ConformerSpeakerModel

    cfg = ConformerSpeakerConfig(d_model=16, encoder_layers=1, attention_heads=2, ffn_dim=32, depthwise_kernel=3,
                                 embed_dim=8, n_mels=16, trainable_mel=True, n_fft=400)
    model = ConformerSpeakerModel(cfg, num_classes=3, input_type="audio").eval()
    with torch.no_grad():
        model.frontend.mel_basis.mul_(0.5)  # "trained": no longer the initial filterbank
    up = upstream_for_model(model)
    assert type(up).__name__ == "LogMelUpstream" and up.model is model.frontend and up.dim == 16
    wav = torch.randn(2, 1600)
    mask = torch.zeros(2, 1600, dtype=torch.bool)
    mask[1, 1000:] = True
    with torch.no_grad():
        states, fmask = up(wav, mask)
        feats, ref_mask = model.features(wav, mask)  # what the speaker model itself reads
    assert torch.equal(fmask, ref_mask)
    torch.testing.assert_close(states[0][0], feats[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(states[0][1, :7], feats[1, :7], atol=1e-5, rtol=0)


def test_registry_errors(tmp_path):
    assert {"hubert", "pase", "logmel"} <= set(UPSTREAMS) and "logmel" in NAMED_UPSTREAMS
    with pytest.raises(UserError, match=r"does not exist.*names: .*logmel"):
        load_upstream(str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="does not exist.*names"):
        load_upstream("nosuchupstream:n_mels=3")
    with pytest.raises(UserError, match="does not exist.*names"):  # a path with a colon is no name
        load_upstream(str(tmp_path / "run:3" / "checkpoint_best.pt"))
    with pytest.raises(UserError, match="unknown option.*bogus"):
        load_upstream("logmel:bogus=1")
    with pytest.raises(UserError, match="is not key=value"):
        load_upstream("logmel:n_mels")
    with pytest.raises(UserError, match="n_mels='x' is not a int"):
        load_upstream("logmel:n_mels=x")
    with pytest.raises(UserError, match="logmel upstream: n_mels must be >= 1"):
        load_upstream("logmel:n_mels=0")
    assert parse_upstream_name("logmel: n_mels=80 ,n_fft=400") == ("logmel", {"n_mels": "80", "n_fft": "400"})
    with pytest.raises(UserError, match="Linear is not a model whose layer features can be read"):
        upstream_for_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="registered twice"):
        register_upstream("pase")(type("Other", (Upstream,), {}))
    with pytest.raises(ValueError, match="registered twice"):
        register_named_upstream("logmel")(lambda **kw: None)
    up = load_upstream("logmel")
    with pytest.raises(UserError, match="layer 1 is out of range"):
        up(torch.randn(1, 800), layers=[1])


def test_frozen_upstream_takes_any_kind(ckpts):
    """The speaker model's frozen front-end reads PASE+ (weighted sum over its 8 states) and named log-Mels."""
    from fairseq_ext.modules.ssl_upstream import FrozenSSLUpstream

    up = FrozenSSLUpstream(ckpts["pase_plus"], layer=-1)
    assert up.num_layers == 7 and up.out_dim == 12 and up.layer_weights.shape == (8,)
    wav = 0.1 * torch.randn(2, 3200)
    mask = torch.zeros(2, 3200, dtype=torch.bool)
    mask[1, 2000:] = True
    feats, fmask = up(wav, mask)
    assert feats.shape == (2, 20, 12) and fmask[1].sum() == 20 - 2000 // 160
    feats.sum().backward()
    assert up.layer_weights.grad.abs().sum() > 0
    assert all(p.grad is None for p in up.model.parameters())
    plain = FrozenSSLUpstream(ckpts["pase"], layer=-1)  # PASE: one state, a 1-weight sum
    assert plain.num_layers == 0 and plain(wav, mask)[0].shape == (2, 20, 12)
    mel = FrozenSSLUpstream("logmel:n_mels=20", layer=0)
    assert mel(wav)[0].shape == (2, 21, 20)
    with pytest.raises(UserError, match="model.ssl_checkpoint: checkpoint .* does not exist"):
        FrozenSSLUpstream("/nonexistent/x.pt")


def test_speaker_task_trains_on_a_pase_upstream(ckpts, demo_corpus, tmp_path):
    """fairseq-hydra-train --user-dir: speaker ID on a frozen tiny PASE+ (learned weighted sum), a few updates."""
    from tests.test_speaker_data import write_labeled_manifest

    manifest = tmp_path / "manifest"
    write_labeled_manifest(demo_corpus, manifest)
    exe = shutil.which("fairseq-hydra-train")
    cmd = [exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    cmd += ["--config-dir", str(REPO / "config" / "speaker"), "--config-name", "tiny", "hydra.run.dir=.",
            "common.cpu=true", "dataset.num_workers=0", f"common.user_dir={REPO / 'fairseq_ext'}",
            f"task.data={manifest}", "task.input_type=ssl", "task.samples_per_frame=160",
            f"model.ssl_checkpoint={ckpts['pase_plus']}", "model.ssl_layer=-1", "optimization.max_update=3",
            "dataset.batch_size=4", "dataset.disable_validation=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "frozen SSL upstream" in log and "7 layers, dim 12" in log
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 3
    weights = state["model"]["frontend.layer_sum.weights"]
    assert weights.shape == (8,) and weights.abs().sum() > 0  # the layer weights were trained
