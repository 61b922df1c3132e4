"""Tests of the confusion speaker adversary (``model.spk_adversary=confusion``): the classifier
learns from detached features, the encoder only from the bounded uniform-target loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fairseq_ext
fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
from fairseq_ext.criteria.dhubert import DHubertCriterion
from test_dhubert_model import build, fixed_masks, task_and_batch  # noqa: F401  (fixtures)

ENC = "encoder.layers.0.fc1.weight"
MLP = "spk_head.mlp.0.weight"


def _grads(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("unit", ["frame", "utterance"])
def test_classifier_and_encoder_get_separate_losses(task_and_batch, fixed_masks, unit):  # noqa: F811
    task, batch = task_and_batch
    model = build(task, spk_adversary="confusion", spk_unit=unit, pitch_layer=0).eval()
    out = model(target_list=batch["target_list"], **batch["net_input"])
    assert torch.allclose(out["spk_logits"], out["spk_confusion_logits"], atol=1e-6)  # same classifier
    g_cls = _grads(model, out["spk_logits"].logsumexp(-1).sum())
    assert g_cls[ENC] is None and g_cls[MLP].abs().sum() > 0  # classifier loss: classifier only
    g_conf = _grads(model, out["spk_confusion_logits"].logsumexp(-1).sum())
    assert g_conf[MLP] is None and g_conf[ENC].abs().sum() > 0  # confusion loss: encoder only
    # the encoder gradient is the plain (unreversed) gradient of the loss through the classifier
    ref = build(task, spk_adversary="reverse", spk_unit=unit, pitch_layer=0).eval()
    ref.grl = nn.Identity()
    ref.load_state_dict(model.state_dict())
    out_ref = ref(target_list=batch["target_list"], **batch["net_input"])
    g_ref = _grads(ref, out_ref["spk_logits"].logsumexp(-1).sum())
    assert torch.allclose(g_conf[ENC], g_ref[ENC], rtol=1e-4, atol=1e-7)


def test_criterion_confusion_term_is_bounded_below_by_chance(task_and_batch, fixed_masks):  # noqa: F811
    task, batch = task_and_batch
    model = build(task, spk_adversary="confusion", spk_unit="frame", pitch_layer=0, adv_weight=0.5)
    crit = DHubertCriterion(task, 1.0, 0.0, [10.0], spk_weight=2.0)
    loss, sample_size, log = crit(model, batch)
    k = len(task.speakers)
    floor = 2.0 * 0.5 * torch.log(torch.tensor(float(k))).item() * sample_size
    assert float(log["loss_spk_confusion"]) >= floor - 1e-3
    with torch.no_grad():  # a classifier that outputs uniform probabilities sits exactly at the floor
        model.spk_head.mlp[-1].weight.zero_()
        model.spk_head.mlp[-1].bias.zero_()
    _, _, log = crit(model, batch)
    assert float(log["loss_spk_confusion"]) == pytest.approx(floor, rel=1e-5)
    assert torch.isfinite(loss)


def test_confusion_refuses_a_trainable_pooling(task_and_batch):  # noqa: F811
    task, _ = task_and_batch
    with pytest.raises(ValueError, match="parameter-free pooling"):
        build(task, spk_adversary="confusion", spk_unit="utterance", spk_pooling="attentive")
