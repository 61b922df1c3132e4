"""``phone_ctc``: CTC loss over phones, with the phone error rate (PER) in the validation log.

fairseq's own ``ctc`` criterion expects ``(T, B, V)`` encoder outputs and scores words after a text
post-processing step; here the model (:mod:`fairseq_ext.models.phone_recognizer`) gives ``(B, T, V)``
log-probabilities with their lengths, and PER comes from :mod:`fairseq_ext.phone_error` (greedy CTC
decoding, edit distance), the same code ``fairseq-ext-pr-eval`` uses. The loss is reported as fairseq's
``ctc`` reports it: summed CTC negative log-likelihood per target phone (or per utterance with
``sentence_avg``), in bits.

Logging outputs are plain sums (``logging_outputs_can_be_summed() -> True``): ``phone_errors`` and
``ref_phones`` are counted in eval mode only; ``per`` (percent) is derived from their totals.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.logging.meters import safe_round
from omegaconf import II

from fairseq_ext.data.phone_transcripts import ctc_blank_index
from fairseq_ext.phone_error import ctc_greedy_decode, phone_errors


@dataclass
class PhoneCtcConfig(FairseqDataclass):
    zero_infinity: bool = field(default=False, metadata={
        "help": "zero infinite losses (an utterance whose frames cannot hold its phones; the task refuses those)"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("phone_ctc", dataclass=PhoneCtcConfig)
class PhoneCtcCriterion(FairseqCriterion):
    """CTC over the task's phone dictionary (blank ``<s>``, index 0); PER in eval mode."""

    def __init__(self, cfg: PhoneCtcConfig, task):
        super().__init__(task)
        self.blank_idx = ctc_blank_index(task.target_dictionary)
        self.pad_idx = task.target_dictionary.pad()
        self.zero_infinity = cfg.zero_infinity
        self.sentence_avg = cfg.sentence_avg

    def forward(self, model, sample: Dict, reduce: bool = True) -> Tuple[torch.Tensor, int, Dict]:
        net_output = model(**sample["net_input"])
        log_probs = net_output["log_probs"]  # (B, T, V)
        lengths = net_output["lengths"]  # (B,)
        target, target_lengths = sample["target"], sample["target_lengths"]  # (B, N), (B,)
        with torch.backends.cudnn.flags(enabled=False):
            loss = F.ctc_loss(log_probs.transpose(0, 1), target.masked_select(target != self.pad_idx), lengths,
                              target_lengths, blank=self.blank_idx, reduction="sum",
                              zero_infinity=self.zero_infinity)
        ntokens = int(target_lengths.sum())
        sample_size = target.size(0) if self.sentence_avg else ntokens
        logging_output = {"loss": utils.item(loss.data), "ntokens": ntokens, "nsentences": target.size(0),
                          "sample_size": sample_size}
        if not model.training:
            with torch.no_grad():
                mask = net_output["padding_mask"]
                hyps = ctc_greedy_decode(log_probs.float().cpu(), None if mask is None else mask.cpu(), self.blank_idx)
            refs = [t[:n].tolist() for t, n in zip(target.cpu(), target_lengths.tolist())]
            errors = phone_errors(refs, hyps)
            logging_output["phone_errors"] = errors.errors
            logging_output["ref_phones"] = errors.ref_phones
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict]) -> None:
        def total(key: str) -> float:
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        loss_sum, ntokens, sample_size = total("loss"), total("ntokens"), total("sample_size")
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1) / math.log(2), sample_size, round=3)
        metrics.log_scalar("ntokens", ntokens)
        metrics.log_scalar("nsentences", total("nsentences"))
        if sample_size != ntokens:
            metrics.log_scalar("nll_loss", loss_sum / max(ntokens, 1) / math.log(2), ntokens, round=3)
        ref_phones = total("ref_phones")
        if ref_phones > 0:
            metrics.log_scalar("_phone_errors", total("phone_errors"))
            metrics.log_scalar("_ref_phones", ref_phones)
            metrics.log_derived("per", lambda meters: safe_round(
                meters["_phone_errors"].sum * 100.0 / meters["_ref_phones"].sum, 3)
                if meters["_ref_phones"].sum > 0 else float("nan"))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


__all__ = ["PhoneCtcConfig", "PhoneCtcCriterion"]
