"""fairseq_ext/encoder.py: one interface to every layer of an encoder, padding-exact, one frame count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.frames import HUBERT_CONV_LAYERS, conv_output_length, frames_at_rate
from fairseq_ext.encoder import (
    UPSTREAMS,
    ChunkedReader,
    HubertUpstream,
    Upstream,
    load_upstream,
    register_upstream,
    upstream_for_model,
)
from fairseq_ext.tiny_checkpoint import TINY_CONV_LAYERS, make_tiny_hubert_checkpoint


@pytest.fixture(scope="module")
def hubert(tmp_path_factory) -> HubertUpstream:
    """fairseq HuBERT, GroupNorm CNN (HuBERT Base's), 3 layers, task.normalize=true."""
    path = make_tiny_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "hubert.pt", label_rate=50,
                                       normalize=True, encoder_layers=3, seed=3)
    return load_upstream(str(path))


@pytest.fixture(scope="module")
def dhubert() -> HubertUpstream:
    """This package's disentangled HuBERT (speaker and pitch heads), read through the same interface."""
    from fairseq.data import Dictionary
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    from fairseq_ext.models.dhubert import DHubertConfig, DHubertModel

    cfg = DHubertConfig(label_rate=50, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                        encoder_attention_heads=2, final_dim=32, conv_pos=16, conv_pos_groups=4,
                        conv_feature_layers=TINY_CONV_LAYERS, spk_layer=1, pitch_layer=0, max_update=10)
    d = Dictionary()
    for i in range(5):
        d.add_symbol(str(i))
    torch.manual_seed(0)
    model = DHubertModel(cfg, HubertPretrainingConfig(data="x", labels=["km"]), [d], n_speakers=3)
    up = upstream_for_model(model)
    assert isinstance(up, HubertUpstream)
    return up


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    mask = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for b, n in enumerate(lengths):
        wav[b, :n] = 0.1 * torch.randn(n, generator=g)
        mask[b, :n] = False
    return wav, mask


@pytest.mark.parametrize("name", ["hubert", "dhubert"])
def test_batched_equals_per_utterance(name, request):
    up: Upstream = request.getfixturevalue(name)
    lengths = [16000, 9000, 12345, 400, 399]  # the last one is too short for a frame
    wav, mask = _batch(lengths)
    with torch.no_grad():
        states, frame_mask = up(wav, mask)
    assert len(states) == up.num_layers + 1
    frames = [up.num_frames(n) for n in lengths]
    assert frames[-2:] == [1, 0]
    assert frame_mask.tolist() == [[t >= n for t in range(max(frames))] for n in frames]
    for b, n in enumerate(lengths):
        with torch.no_grad():
            alone, none = up(wav[b:b + 1, :n])
        assert none is None
        for layer, (s, a) in enumerate(zip(states, alone)):
            assert s.shape == (len(lengths), max(frames), up.dim) and a.shape == (1, frames[b], up.dim)
            torch.testing.assert_close(s[b, : frames[b]], a[0], atol=1e-5, rtol=0, msg=f"layer {layer}")
            assert not s[b, frames[b]:].any()  # padded frames are zero


@pytest.mark.parametrize("name", ["hubert", "dhubert"])
def test_every_layer_from_one_pass_equals_extract_features(name, request):
    up: Upstream = request.getfixturevalue(name)
    wav = 0.1 * torch.randn(1, 11111, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states, _ = up(wav)
        source = F.layer_norm(wav, wav.shape[-1:]) if up.normalize else wav
        for layer in range(1, up.num_layers + 1):
            ref, _ = up.model.extract_features(source, padding_mask=None, mask=False, output_layer=layer)
            torch.testing.assert_close(states[layer], ref, atol=0, rtol=0)
        projected_cnn, _ = up.model.extract_features(source, padding_mask=None, mask=False, ret_conv=True)
        torch.testing.assert_close(states[0], projected_cnn, atol=0, rtol=0)
        # a subset of layers is the same numbers
        some, _ = up(wav, None, [up.num_layers, 0])
    torch.testing.assert_close(some[0], states[-1], atol=0, rtol=0)
    torch.testing.assert_close(some[1], states[0], atol=0, rtol=0)


def test_num_frames_is_the_real_models_output_length(hubert):
    rng = np.random.default_rng(0)
    lengths = sorted({399, 400, 401, 719, 720, 721, 1039, 1040, 16000, 16319, 16320, 16321}
                     | set(rng.integers(300, 40000, 40).tolist()))
    assert hubert.conv_layers == [(32, k, s) for _, k, s in HUBERT_CONV_LAYERS] and hubert.frame_shift == 320
    with torch.no_grad():
        for n in lengths:
            expected = hubert.num_frames(n)
            assert expected == conv_output_length(n) == frames_at_rate(n, 50), n
            if n >= 400:
                assert hubert.model.feature_extractor(torch.zeros(1, n)).shape[-1] == expected, n
                x, _ = hubert.model.extract_features(torch.zeros(1, n), mask=False, output_layer=1)
                assert x.shape[1] == expected, n
            else:
                assert expected == 0


def test_chunked_reader_splits_like_fairseq(hubert):
    reader = ChunkedReader(hubert, [0, 2], max_chunk=8000)
    wav = np.random.default_rng(0).standard_normal(2 * 8000 + 500).astype(np.float32)
    assert reader.pieces(len(wav)) == [(0, 8000), (8000, 16000), (16000, 16500)]
    out = reader.extract([wav, wav[:300]], batch_samples=10**6)
    assert out[0][2].shape == (reader.num_frames(len(wav)), 64) == (2 * hubert.num_frames(8000) + 1, 64)
    assert out[1][0].shape == (0, 64)
    with pytest.raises(UserError, match="max_chunk 300 is shorter"):
        ChunkedReader(hubert, [1], max_chunk=300)


def test_registry():
    assert UPSTREAMS["hubert"] is HubertUpstream
    with pytest.raises(UserError, match="not a model whose layer features can be read"):
        upstream_for_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="registered twice"):
        register_upstream("hubert")(type("Other", (Upstream,), {}))

    class Frames(Upstream):  # a new kind registers itself; upstream_for_model finds it
        num_layers, dim = 0, 2

        def __init__(self, model, normalize=False, sample_rate=16000):
            self.model = model

        @classmethod
        def accepts(cls, model):
            return isinstance(model, torch.nn.Identity)

    register_upstream("test_frames")(Frames)
    try:
        assert isinstance(upstream_for_model(torch.nn.Identity()), Frames)
    finally:
        del UPSTREAMS["test_frames"]


def test_fine_tuned_model_is_unwrapped(hubert):
    """A fine-tuned HubertCtc's pretrained encoder (``w2v_encoder.w2v_model``) is what is read."""
    ctc = torch.nn.Module()
    ctc.w2v_encoder = torch.nn.Module()
    ctc.w2v_encoder.w2v_model = hubert.model
    up = upstream_for_model(ctc)
    assert up.model is hubert.model and up.num_layers == 3


def test_load_upstream_errors(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_upstream(str(tmp_path / "missing.pt"))
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a torch checkpoint"):
        load_upstream(str(tmp_path / "x.pt"))
