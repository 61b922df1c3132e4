"""conformer_speaker: padding invariance, the padding-safe Conformer layer, poolings."""

from __future__ import annotations

import pytest
import torch

from fairseq_ext.models.conformer_speaker import ConformerSpeakerConfig, ConformerSpeakerModel
from fairseq_ext.modules.masked_conformer import MaskedConformerEncoderLayer
from fairseq_ext.modules.pooling import build_pooling, masked_mean


def _model(input_type: str = "homework", **kw) -> ConformerSpeakerModel:
    torch.manual_seed(0)
    base = dict(d_model=32, encoder_layers=2, attention_heads=2, ffn_dim=64, depthwise_kernel=7, dropout=0.1,
                embed_dim=24)
    base.update(kw)
    return ConformerSpeakerModel(ConformerSpeakerConfig(**base), num_classes=5, input_type=input_type,
                                 in_dim=40).eval()


def _padded_batch(utt: torch.Tensor, others: list) -> tuple:
    """``utt`` first, then longer ones; zero padding + padding mask (pads filled with junk)."""
    seqs = [utt] + others
    T = max(len(s) for s in seqs)
    x = torch.randn((len(seqs), T) + tuple(utt.shape[1:])) * 7  # junk in the padding
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, len(s):] = True
    return x, mask


@pytest.mark.parametrize("encoder_type,pooling", [
    ("conformer", "self_attention"), ("conformer", "attentive_stats"), ("conformer", "mean"),
    ("transformer", "mean"),
])
def test_embedding_does_not_depend_on_batch_padding(encoder_type, pooling):
    model = _model(encoder_type=encoder_type, pooling=pooling)
    g = torch.Generator().manual_seed(1)
    utt = torch.randn(30, 40, generator=g)
    others = [torch.randn(50, 40, generator=g), torch.randn(43, 40, generator=g)]
    with torch.no_grad():
        alone = model(utt[None])["embedding"][0]
        x, mask = _padded_batch(utt, others)
        batched = model(x, mask)["embedding"]
        # and each longer utterance alone
        other0 = model(others[0][None])["embedding"][0]
    assert (alone - batched[0]).abs().max() < 1e-5
    assert (other0 - batched[1]).abs().max() < 1e-5
    assert (alone - batched[1]).abs().max() > 1e-3  # different utterances differ


def test_audio_frontend_embedding_does_not_depend_on_batch_padding():
    model = _model("audio", pooling="self_attention", input_norm="utterance")
    g = torch.Generator().manual_seed(2)
    wav = 0.1 * torch.randn(4321, generator=g)
    other = 0.1 * torch.randn(9000, generator=g)
    with torch.no_grad():
        alone = model(wav[None])["embedding"][0]
        x = torch.zeros(2, 9000)
        x[0, :4321], x[1] = wav, other
        mask = torch.zeros(2, 9000, dtype=torch.bool)
        mask[0, 4321:] = True
        batched = model(x, mask)["embedding"][0]
    assert (alone - batched).abs().max() < 1e-5


def test_fairseq_conformer_layer_leaks_padding_and_ours_does_not():
    from fairseq.modules.conformer_layer import ConformerEncoderLayer

    torch.manual_seed(0)
    ref = ConformerEncoderLayer(32, 64, 4, 0.0, False, depthwise_conv_kernel_size=7).eval()
    ours = MaskedConformerEncoderLayer(32, 64, 4, 0.0, False, depthwise_conv_kernel_size=7).eval()
    ours.load_state_dict(ref.state_dict())  # same parameters, same names
    x = torch.randn(30, 1, 32)
    xp = torch.cat([x, 5 * torch.randn(20, 1, 32)])
    mask = torch.zeros(1, 50, dtype=torch.bool)
    mask[:, 30:] = True
    with torch.no_grad():
        assert (ref(x, None)[0] - ours(x, None)[0]).abs().max() < 1e-6  # identical without padding
        leak = (ref(xp, mask)[0][:30] - ref(x, None)[0]).abs().max()
        ours_diff = (ours(xp, mask)[0][:30] - ours(x, None)[0]).abs().max()
    assert leak > 1e-3
    assert ours_diff < 1e-5


def test_masked_batch_norm_statistics_skip_padding_in_training():
    torch.manual_seed(0)
    a = MaskedConformerEncoderLayer(16, 32, 2, 0.0, False, depthwise_conv_kernel_size=5).train()
    b = MaskedConformerEncoderLayer(16, 32, 2, 0.0, False, depthwise_conv_kernel_size=5).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(20, 1, 16)
    xp = torch.cat([x, 3 * torch.randn(15, 1, 16)])
    mask = torch.zeros(1, 35, dtype=torch.bool)
    mask[:, 20:] = True
    out_a = a(x, None)[0]
    out_b = b(xp, mask)[0][:20]
    bn_a, bn_b = a.conv_module.batch_norm, b.conv_module.batch_norm
    assert torch.allclose(bn_a.running_mean, bn_b.running_mean, atol=1e-6)
    assert torch.allclose(bn_a.running_var, bn_b.running_var, atol=1e-5)
    assert (out_a - out_b).abs().max() < 1e-5


def test_poolings_ignore_padded_frames():
    x = torch.randn(2, 10, 8)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 6:] = True
    assert torch.allclose(masked_mean(x, mask)[0], x[0, :6].mean(0), atol=1e-6)
    for name, dim in (("mean", 8), ("self_attention", 8), ("attentive", 8), ("attentive_stats", 16)):
        pool = build_pooling(name, 8)
        assert pool.out_dim == dim
        full = pool(x, mask)
        y = x.clone()
        y[0, 6:] = float("nan")  # padding content must not matter at all
        assert torch.allclose(pool(y, mask), full, atol=1e-6)
        assert torch.allclose(pool(x[:1, :6], None)[0], full[0], atol=1e-6)
        empty = pool(x, torch.ones_like(mask))[:, :8]  # no real frame at all: zero mean, not NaN
        assert torch.equal(empty, torch.zeros_like(empty))


def test_bad_pooling_and_kernel_are_rejected():
    with pytest.raises(ValueError, match="unknown pooling"):
        build_pooling("max", 8)
    with pytest.raises(ValueError, match="odd"):
        _model(depthwise_kernel=6)


def test_wrong_feature_dimension_is_a_clear_error():
    model = _model()
    with pytest.raises(ValueError, match=r"expected \(B, T, 40\)"):
        model(torch.randn(1, 20, 30))


def test_frozen_ssl_upstream_layers(tmp_path):
    """The speaker model's frozen SSL front-end reads the encoder interface: a padded batch gives each
    utterance's own features (as ``extract_features`` on it alone), frames past its end are masked."""
    from fairseq_ext.modules.ssl_upstream import FrozenSSLUpstream
    from fairseq_ext.base.errors import UserError
    from fairseq_ext.base.frames import conv_output_length
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    ckpt = str(make_tiny_hubert_checkpoint(tmp_path / "hubert.pt"))
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 8000, generator=g)
    mask = torch.zeros(2, 8000, dtype=torch.bool)
    mask[1, 6000:] = True
    wav[1, 6000:] = 0
    n_frames = [conv_output_length(8000), conv_output_length(6000)]  # the tiny CNN has HuBERT's kernels and strides
    for k in (1, 2):
        up = FrozenSSLUpstream(ckpt, layer=k).train()  # train() must keep the upstream in eval mode
        assert not up.model.training and up.layer_weights is None
        feats, fmask = up(wav, mask)
        assert fmask.tolist() == [[t >= n for t in range(n_frames[0])] for n in n_frames]
        with torch.no_grad():
            for b, n in enumerate(n_frames):
                ref, _ = up.model.extract_features(wav[b:b + 1, : 8000 - 2000 * b], mask=False, output_layer=k)
                assert ref.shape[1] == n
                torch.testing.assert_close(feats[b, :n], ref[0], atol=1e-5, rtol=0)
    up = FrozenSSLUpstream(ckpt, layer=-1)
    assert up.out_dim == 64 and up.num_layers == 2
    feats, _ = up(wav, mask)
    feats.sum().backward()
    assert up.layer_weights.grad is not None and up.layer_weights.grad.abs().sum() > 0
    assert all(p.grad is None for p in up.model.parameters())
    # speaker checkpoints saved before the weights moved into layer_sum still load
    state = {("layer_weights" if k == "layer_sum.weights" else k): v for k, v in up.state_dict().items()}
    state["layer_weights"] = torch.arange(3.0)
    fresh = FrozenSSLUpstream(ckpt, layer=-1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.layer_weights.detach(), torch.arange(3.0))
    with pytest.raises(UserError, match="hidden states 0..2"):
        FrozenSSLUpstream(ckpt, layer=3)
    with pytest.raises(UserError, match="does not exist"):
        FrozenSSLUpstream(str(tmp_path / "nope.pt"))
