"""Tests of the frame-level speaker adversary (``model.spk_unit=frame``): the classifier, the
model's outputs and gradient reversal, and the criterion's frame-level loss and memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fairseq_ext
fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
from fairseq_ext.criteria.dhubert import DHubertCriterion
from fairseq_ext.modules.speaker_classifier import SpeakerClassifier, utterance_log_probs
from test_dhubert_model import build, fixed_masks, task_and_batch  # noqa: F401  (fixtures)


def padded_batch(lengths, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g)
    pad = torch.arange(max(lengths)).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    return x, pad


def test_frame_classifier_keeps_the_valid_frames_with_their_owners():
    x, pad = padded_batch([5, 2, 4])
    clf = SpeakerClassifier(6, 3, hidden_dim=8, dropout=0.0, unit="frame")
    v, owner = clf.embed(x, pad)
    assert v.shape == (11, 6) and owner.tolist() == [0] * 5 + [1] * 2 + [2] * 4
    assert torch.equal(v, torch.cat([x[0, :5], x[1, :2], x[2, :4]]))
    assert clf.out_dim == 6 and clf.pool is None
    v_utt, owner_utt = SpeakerClassifier(6, 3, hidden_dim=8, unit="utterance").embed(x, pad)
    assert v_utt.shape == (3, 6) and owner_utt is None
    with pytest.raises(ValueError, match="unit"):
        SpeakerClassifier(6, 3, unit="segment")


def test_utterance_log_probs_average_frame_log_probs():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    owner = torch.tensor([0, 0, 2])
    out = utterance_log_probs(logits, owner, 3)
    logp = torch.log_softmax(logits, -1)
    assert torch.allclose(out[0], (logp[0] + logp[1]) / 2) and torch.allclose(out[2], logp[2])
    assert torch.equal(out[1], torch.zeros(2))  # no frames


@pytest.mark.parametrize("standardize", [False, True])
def test_frame_classifier_batched_equals_single(standardize):
    torch.manual_seed(0)
    lengths = [7, 3, 5]
    x, pad = padded_batch(lengths)
    clf = SpeakerClassifier(6, 4, hidden_dim=8, dropout=0.0, standardize=standardize, unit="frame")
    if standardize:
        clf.train()(x, pad)  # fill the running statistics, then freeze them
    clf.eval()
    batched = clf(x, pad)
    assert batched.shape == (3, 4)
    for i, n in enumerate(lengths):
        assert torch.allclose(batched[i], clf(x[i:i + 1, :n])[0], atol=1e-6)


def test_model_frame_outputs_and_reversed_gradient(task_and_batch, fixed_masks):  # noqa: F811
    task, batch = task_and_batch
    grads = {}
    for variant in ("grl", "identity"):
        model = build(task, spk_unit="frame", adv_weight=0.3, pitch_layer=0).eval()
        if variant == "identity":
            model.grl = nn.Identity()
        out = model(target_list=batch["target_list"], **batch["net_input"])
        n_valid = int((~out["padding_mask"]).sum())
        assert out["spk_logits"].shape == (n_valid, len(task.speakers))
        assert out["spk_owner"].shape == (n_valid,) and out["spk_owner"].max() == batch["id"].numel() - 1
        out["spk_logits"].logsumexp(-1).sum().backward()
        grads[variant] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    enc = "encoder.layers.0.fc1.weight"
    assert grads["identity"][enc].abs().sum() > 0
    assert torch.allclose(grads["grl"][enc], -0.3 * grads["identity"][enc], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads["grl"]["spk_head.mlp.0.weight"], grads["identity"]["spk_head.mlp.0.weight"], atol=1e-6)


def test_frame_adversary_ignores_masked_frames_when_asked(task_and_batch, fixed_masks):  # noqa: F811
    task, batch = task_and_batch
    model = build(task, spk_unit="frame", spk_frames="unmasked", pitch_layer=0).eval()
    out = model(target_list=batch["target_list"], **batch["net_input"])
    kept = ~out["padding_mask"]
    kept[:, ::3] = False  # fixed_masks masks every third frame
    assert out["spk_owner"].tolist() == kept.nonzero()[:, 0].tolist()


def test_criterion_frame_loss_accuracy_and_memory(task_and_batch, fixed_masks):  # noqa: F811
    task, batch = task_and_batch
    model = build(task, spk_unit="frame", spk_memory_size=10000, pitch_layer=0, spk_standardize=False)
    crit = DHubertCriterion(task, 1.0, 0.0, [10.0], spk_weight=2.0)
    out = model(target_list=batch["target_list"], **batch["net_input"])
    spk = batch["spk_id"]
    loss, sample_size, log = crit(model, batch)
    # the criterion ran its own forward: same weights and masks, so the same frame logits
    frame_ce = nn.functional.cross_entropy(out["spk_logits"], spk[out["spk_owner"]])
    assert float(log["loss_spk"]) == pytest.approx(2.0 * float(frame_ce) * sample_size, rel=1e-4)
    utt = utterance_log_probs(out["spk_logits"], out["spk_owner"], spk.numel())
    assert int(log["spk_correct"]) == int((utt.argmax(-1) == spk).sum()) and log["spk_count"] == spk.numel()
    assert float(log["spk_ce"]) == pytest.approx(float(nn.functional.cross_entropy(utt, spk, reduction="sum")), rel=1e-4)
    # the memory now holds every valid frame, labelled with its utterance's speaker
    feats, labels = model.spk_memory.get()
    assert feats.shape == out["spk_logits"].shape[:1] + (model.spk_head.out_dim,)
    assert torch.equal(labels, spk[out["spk_owner"]])
    loss2, _, log2 = crit(model, batch)
    assert log2["loss_spk_memory"] > 0 and torch.isfinite(loss2)
