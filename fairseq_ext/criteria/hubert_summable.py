"""Criterion ``hubert_summable``: fairseq's HuBERT loss whose logging outputs are plain sums.

fairseq's ``HubertCriterion`` says its logging outputs cannot be summed, which makes the trainer
gather them with ``all_gather_list`` (CUDA only: multi-process CPU training fails). Here every
logged value is a sum (losses, correct counts, frame counts; ``log_keys`` values are multiplied by
the number of sentences), means are derived in :meth:`reduce_metrics`, and
``logging_outputs_can_be_summed()`` is True. Loss, weights and metric names match fairseq's.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.hubert_criterion import HubertCriterion, HubertCriterionConfig
from fairseq.logging import metrics


def count_correct(logits: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """HuBERT accuracy counts on (N, 1 + n_classes) logits whose target is column 0.

    A row counts as correct when column 0 is the maximum and not also the minimum (all-equal rows
    are wrong). Returns ``(correct, N)``.
    """
    if logits.numel() == 0:
        return logits.new_zeros((), dtype=torch.long), 0
    is_max = logits.argmax(-1) == 0
    is_min = logits.argmin(-1) == 0
    return (is_max & ~is_min).sum(), logits.size(0)


@register_criterion("hubert_summable", dataclass=HubertCriterionConfig)
class HubertSummableCriterion(HubertCriterion):
    """HuBERT masked-prediction loss (as fairseq's ``hubert`` criterion) with summable logging."""

    # logged sums that reduce_metrics derives metrics from; any other key is a log_keys value
    HANDLED_KEYS: Tuple[str, ...] = ("loss", "ntokens", "nsentences", "sample_size")
    HANDLED_PREFIXES: Tuple[str, ...] = ("loss_", "count_", "correct_")

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True, log_pred: bool = False):
        """Returns ``(loss, sample_size, logging_output)``; ``loss`` is a sum over predicted frames."""
        net_output = model(target_list=sample["target_list"], **sample["net_input"])
        return self.hubert_loss(model, net_output, sample)

    def hubert_loss(self, model, net_output: Dict[str, Any],
                    sample: Dict[str, Any]) -> Tuple[torch.Tensor, int, Dict[str, Any]]:
        """HuBERT's loss terms from a model output; every logging value is a sum."""
        loss = torch.zeros((), device=sample["net_input"]["source"].device)
        sample_size = 0
        log: Dict[str, Any] = {}
        for tag, weight, is_masked in (("m", self.pred_masked_weight, True), ("u", self.pred_nomask_weight, False)):
            logits_list = model.get_logits(net_output, is_masked)
            targets_list = model.get_targets(net_output, is_masked)
            assert weight == 0 or len(logits_list) > 0, f"no logits for the {tag} loss but its weight is {weight}"
            losses = []
            for i, (logits, targets) in enumerate(zip(logits_list, targets_list)):
                ce = F.cross_entropy(logits, targets, reduction="sum")
                losses.append(ce)
                log[f"loss_{tag}_{i}"] = ce.detach()
                with torch.no_grad():
                    log[f"correct_{tag}_{i}"], log[f"count_{tag}_{i}"] = count_correct(logits)
            if weight > 0:
                loss = loss + weight * sum(losses)
                sample_size += targets_list[0].numel()

        if self.loss_weights is not None:
            extra, names = model.get_extra_losses(net_output)
            if torch.is_tensor(extra):
                extra, names = [extra], [names]
            weights = self.loss_weights
            if len(weights) == 1 and len(extra) != 1:
                weights = weights * len(extra)
            assert len(extra) == len(weights), f"{len(extra)} extra losses but {len(weights)} loss_weights"
            for value, name, coef in zip(extra, names, weights):
                if coef != 0 and value is not None:
                    term = coef * value.float() * sample_size
                    loss = loss + term
                    log[f"loss_{name}"] = term.detach()

        log.update({
            "loss": loss.detach(),
            "ntokens": sample_size,
            "nsentences": sample["id"].numel(),
            "sample_size": sample_size,
        })
        for key in self.log_keys:
            if key in net_output:
                log[key] = float(net_output[key]) * sample["id"].numel()
        return loss, sample_size, log

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        """Sum the logging outputs and log fairseq's HuBERT metrics (loss in bits per frame)."""
        keys = set().union(*(lo.keys() for lo in logging_outputs)) if logging_outputs else set()
        total = {k: sum(lo.get(k, 0) for lo in logging_outputs) for k in keys}
        sample_size = total.get("sample_size", 0)
        nsentences = total.get("nsentences", 0)
        denom = max(float(sample_size), 1.0)
        metrics.log_scalar("loss", total.get("loss", 0) / denom / math.log(2), sample_size, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["loss"].avg))
        for k, v in total.items():
            if k.startswith("loss_"):
                metrics.log_scalar(k, v / denom / math.log(2), sample_size, round=3)
            elif k.startswith("count_"):
                metrics.log_scalar(k, v)
            elif k.startswith("correct_"):
                count = total.get("count_" + k[len("correct_"):], 0)
                if count > 0:
                    metrics.log_scalar(k, v / count, count)
        for k, v in total.items():  # log_keys values, logged as value x sentences
            if k not in cls.HANDLED_KEYS and not k.startswith(cls.HANDLED_PREFIXES) and nsentences > 0:
                metrics.log_scalar(k, v / nsentences, nsentences)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
