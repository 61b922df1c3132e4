"""AM-softmax: normalised weights, margin on the target logit only, margin-free accuracy, summable logs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_ext.criteria.am_softmax import (
    AMSoftmaxCriterion, AMSoftmaxCriterionConfig, CosineClassifier, am_softmax_logits,
)


class FixedLogits(nn.Module):
    """Returns given logits (the criterion, not the model, is under test here)."""

    def __init__(self, logits: torch.Tensor, cosine: bool):
        super().__init__()
        self.logits, self.cosine = logits, cosine

    def forward(self, source, padding_mask=None):
        return {"logits": self.logits, "cosine": self.cosine, "embedding": None}


def _criterion(**kw) -> AMSoftmaxCriterion:
    return AMSoftmaxCriterion(AMSoftmaxCriterionConfig(**kw), task=None)


def _sample(target):
    return {"net_input": {"source": torch.zeros(len(target), 1)}, "target": torch.tensor(target)}


def test_cosine_classifier_normalises_embeddings_and_weights_every_call():
    torch.manual_seed(0)
    clf = CosineClassifier(8, 4)
    emb = torch.randn(3, 8)
    out = clf(emb)
    expected = F.normalize(emb, dim=-1) @ F.normalize(clf.weight, dim=-1).t()
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.abs().max() <= 1 + 1e-6
    with torch.no_grad():  # rescaling the raw class weights or the embeddings changes nothing
        clf.weight.mul_(torch.tensor([[10.0], [0.1], [3.0], [7.0]]))
    assert torch.allclose(clf(5 * emb), out, atol=1e-6)
    # self-similarity: an embedding equal to a class weight has cosine 1
    assert torch.allclose(clf(clf.weight[2:3].detach() * 4)[0, 2], torch.tensor(1.0), atol=1e-6)


def test_margin_only_on_the_target_logit():
    cos = torch.tensor([[0.5, 0.2, -0.1], [0.1, 0.3, 0.9]])
    target = torch.tensor([1, 2])
    logits = am_softmax_logits(cos, target, scale=30.0, margin=0.2)
    diff = logits - 30.0 * cos
    expected = torch.zeros_like(cos)
    expected[0, 1] = expected[1, 2] = -30.0 * 0.2
    assert torch.allclose(diff, expected, atol=1e-5)


def test_criterion_loss_and_margin_free_accuracy():
    # utterance 0: target 1 wins by 0.1 < margin -> correct (margin-free) but the margin logits disagree
    cos = torch.tensor([[0.40, 0.50, 0.0], [0.9, 0.1, 0.2]])
    target = [1, 2]
    crit = _criterion(loss="am_softmax", scale=30.0, margin=0.2)
    loss, n, log = crit(FixedLogits(cos, cosine=True), _sample(target))
    ref = F.cross_entropy(30.0 * (cos - 0.2 * F.one_hot(torch.tensor(target), 3)), torch.tensor(target),
                          reduction="sum")
    assert n == 2 and log["nsentences"] == 2
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-6)
    assert int(log["ncorrect"]) == 1  # margin-free: utt 0 right, utt 1 wrong
    margin_argmax = am_softmax_logits(cos, torch.tensor(target), 30.0, 0.2).argmax(-1)
    assert (margin_argmax == torch.tensor(target)).sum() == 0  # with the margin it would count 0


def test_cross_entropy_option_and_errors():
    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    crit = _criterion(loss="cross_entropy")
    loss, _, log = crit(FixedLogits(logits, cosine=False), _sample([0, 0]))
    assert math.isclose(loss.item(), F.cross_entropy(logits, torch.tensor([0, 0]), reduction="sum").item(),
                        rel_tol=1e-6)
    assert int(log["ncorrect"]) == 1
    cos_loss, _, _ = crit(FixedLogits(logits / 10, cosine=True), _sample([0, 0]))  # cosine logits get scaled
    ref = F.cross_entropy(30.0 * logits / 10, torch.tensor([0, 0]), reduction="sum")
    assert math.isclose(cos_loss.item(), ref.item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="classifier=cosine"):
        _criterion(loss="am_softmax")(FixedLogits(logits, cosine=False), _sample([0, 1]))
    with pytest.raises(ValueError, match="no labels"):
        crit(FixedLogits(logits, cosine=False), {"net_input": {}, "target": None})


def test_gradients_reach_the_raw_class_weights():
    torch.manual_seed(0)
    clf = CosineClassifier(6, 3)
    emb = torch.randn(4, 6, requires_grad=True)
    crit = _criterion(scale=30.0, margin=0.2)
    logits = am_softmax_logits(clf(emb), torch.tensor([0, 1, 2, 0]), 30.0, 0.2)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert clf.weight.grad is not None and clf.weight.grad.abs().sum() > 0
    # the gradient of a normalised weight is orthogonal to the weight itself
    radial = (clf.weight.grad * clf.weight.detach()).sum(-1)
    assert radial.abs().max() < 1e-5
    assert crit.logging_outputs_can_be_summed()


def test_reduce_metrics_sums_logging_outputs():
    from fairseq import metrics

    logs = [{"loss": torch.tensor(4.0), "ncorrect": torch.tensor(3), "nsentences": 4, "sample_size": 4,
             "ntokens": 4},
            {"loss": torch.tensor(2.0), "ncorrect": torch.tensor(0), "nsentences": 4, "sample_size": 4,
             "ntokens": 4}]
    with metrics.aggregate() as agg:
        AMSoftmaxCriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert math.isclose(values["loss"], 6.0 / 8, rel_tol=1e-4)
    assert math.isclose(values["accuracy"], 100 * 3 / 8, rel_tol=1e-4)
