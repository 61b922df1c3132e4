"""Additive-margin softmax (AM-softmax / CosFace) for utterance classification, and plain cross-entropy.

AM-softmax (Wang et al. 2018): with L2-normalised embedding ``e`` and L2-normalised class weights
``w_k``, the logits are ``s * (cos(e, w_k) - m * [k == target])``: the margin ``m`` is subtracted
from the target class's cosine only, then everything is scaled by ``s``.

Where the class weights live: in the model (``CosineClassifier``, below, used by
``conformer_speaker`` with ``classifier=cosine``), not in this criterion. The model then returns
margin-free cosine logits that inference can use without the criterion, and a checkpoint carries
every weight needed for prediction. The criterion only adds the margin and the scale.

Both normalisations happen in every forward pass (``F.normalize`` results are used, not discarded:
a known bug in public homework code normalises a local copy and trains an unnormalised softmax).
Accuracy is computed from the margin-free cosines (or logits): the margin is a training device, and
counting with it would under-report accuracy.

Defaults s=30, m=0.2 (MFA-Conformer). The homework seed used s=1, m=0.4: with s=1 the logits lie in
[-1.4, 1], the softmax over hundreds of speakers stays nearly uniform and the loss can hardly
fall, so prefer s around 15-30.
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

LOSS_CHOICES = ChoiceEnum(["am_softmax", "cross_entropy"])


class CosineClassifier(nn.Module):
    """Cosine similarity between L2-normalised embeddings and L2-normalised class weights.

    Args:
        embed_dim: embedding size D.
        num_classes: K.
    Shapes: ``(B, D) -> (B, K)``, values in [-1, 1].
    """

    is_cosine = True

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embedding.float(), dim=-1)
        weight = F.normalize(self.weight.float(), dim=-1)
        return (emb @ weight.t()).to(embedding.dtype)


def am_softmax_logits(cosine: torch.Tensor, target: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """``scale * (cosine - margin * onehot(target))``.

    Args:
        cosine: ``(B, K)`` cosines.
        target: ``(B,)`` class indices.
    Returns:
        ``(B, K)`` logits for cross-entropy.
    """
    onehot = F.one_hot(target, cosine.shape[-1]).to(cosine.dtype)
    return scale * (cosine - margin * onehot)


@dataclass
class AMSoftmaxCriterionConfig(FairseqDataclass):
    loss: LOSS_CHOICES = field(  # type: ignore[valid-type]
        default="am_softmax",
        metadata={"help": "am_softmax: margin on the target cosine (needs model.classifier=cosine); "
                          "cross_entropy: plain softmax cross-entropy on the model's logits "
                          "(cosine logits are multiplied by scale, margin unused)"},
    )
    scale: float = field(default=30.0, metadata={"help": "AM-softmax scale s (the homework seed used 1)"})
    margin: float = field(default=0.2, metadata={"help": "AM-softmax additive margin m (the homework seed used 0.4)"})


@register_criterion("am_softmax", dataclass=AMSoftmaxCriterionConfig)
class AMSoftmaxCriterion(FairseqCriterion):
    """AM-softmax or cross-entropy over utterance labels.

    Logs ``loss`` (mean cross-entropy per utterance in nats, not bits) and ``accuracy`` (%).
    """

    def __init__(self, cfg: AMSoftmaxCriterionConfig, task):
        super().__init__(task)
        self.loss_type = str(cfg.loss)
        self.scale = cfg.scale
        self.margin = cfg.margin
        if self.scale <= 0:
            raise ValueError(f"criterion.scale must be > 0, got {self.scale}")

    def loss_logits(self, logits: torch.Tensor, target: torch.Tensor, cosine: bool) -> torch.Tensor:
        """The logits that go into cross-entropy (margin and scale applied as configured)."""
        if self.loss_type == "am_softmax":
            if not cosine:
                raise ValueError("criterion.loss=am_softmax needs cosine logits: set model.classifier=cosine, "
                                 "or use criterion.loss=cross_entropy with a linear classifier")
            return am_softmax_logits(logits, target, self.scale, self.margin)
        return logits * self.scale if cosine else logits

    def forward(self, model, sample, reduce: bool = True):
        """Returns ``(loss, sample_size, logging_output)``; ``loss`` is summed over the batch."""
        target = sample.get("target")
        if target is None:
            raise ValueError("this batch has no labels (an unlabeled test set?): the criterion needs targets")
        net_output = model(**sample["net_input"])
        logits = net_output["logits"].float()
        loss = F.cross_entropy(self.loss_logits(logits, target, net_output["cosine"]), target,
                               reduction="sum" if reduce else "none")
        ncorrect = (logits.argmax(-1) == target).sum()
        n = target.numel()
        logging_output = {
            "loss": loss.data if reduce else loss.data.sum(),
            "ncorrect": ncorrect.data,
            "ntokens": n,
            "nsentences": n,
            "sample_size": n,
        }
        return loss, n, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(float(log.get("loss", 0)) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        ncorrect = sum(float(log.get("ncorrect", 0)) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1), sample_size, round=4)
        if nsentences > 0:
            metrics.log_scalar("accuracy", 100.0 * ncorrect / nsentences, nsentences, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


__all__ = ["AMSoftmaxCriterion", "AMSoftmaxCriterionConfig", "CosineClassifier", "am_softmax_logits"]
