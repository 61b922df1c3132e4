"""Criterion ``dhubert``: HuBERT loss + speaker-adversary cross-entropy + pitch regression/voicing.

    loss = HuBERT (sum over predicted frames, as fairseq)
         + sample_size * (spk_weight * mean_utt CE(speaker)   (mean_frame with model.spk_unit=frame)
                          + spk_weight * w * mean CE(uniform) through a frozen classifier
                            (model.spk_adversary=confusion only; trains the encoder)
                          + spk_weight * mean CE(speaker) of the adversary's memory of recent
                            utterances (detached: it trains the classifier, not the encoder)
                          + pitch_weight * mean_voiced (log F0 error)^2
                          + vuv_weight * mean_frames BCE(voicing))

The head terms are means scaled by ``sample_size`` (like HuBERT's ``features_pen``), so after
fairseq divides the gradient by ``sample_size`` each weight is relative to HuBERT's per-frame
cross-entropy. The adversary weight ``w`` (GRL strength, confusion weight) and its schedule live
in the model (``dhubert``, output ``adv_weight``); this criterion only minimises the heads'
losses. It passes the batch's speaker ids to the model, which uses them for speaker conditioning
and fills its adversary memory itself: the criterion does not change the model.

Logged (all logging outputs are sums; means derived in ``reduce_metrics``): HuBERT's metrics,
``loss_spk``/``loss_spk_memory``/``loss_spk_confusion``/``loss_pitch``/``loss_vuv`` (weighted contributions, bits per frame like ``loss``),
``spk_ce`` (nats), ``spk_acc``, ``pitch_rmse`` (target units: normalised log F0, natural-log
units when ``task.pitch_norm=none``), ``vuv_bce``, ``vuv_acc``, ``grl_lambda`` (the adversary weight
``w`` at this update; the log key keeps its historical name).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.hubert_criterion import HubertCriterionConfig
from fairseq.logging import metrics

from fairseq_ext.criteria.hubert_summable import HubertSummableCriterion
from fairseq_ext.modules.speaker_classifier import utterance_log_probs


@dataclass
class DHubertCriterionConfig(HubertCriterionConfig):
    spk_weight: float = field(default=1.0, metadata={"help": "weight of the speaker-adversary cross-entropy"})
    pitch_weight: float = field(default=1.0, metadata={"help": "weight of the log-F0 MSE on voiced frames"})
    vuv_weight: float = field(default=1.0, metadata={"help": "weight of the voicing BCE on valid frames"})


@register_criterion("dhubert", dataclass=DHubertCriterionConfig)
class DHubertCriterion(HubertSummableCriterion):
    """HuBERT + speaker adversary + pitch losses, with summable logging (multi-process CPU works)."""

    HANDLED_PREFIXES: Tuple[str, ...] = HubertSummableCriterion.HANDLED_PREFIXES + ("spk_", "pitch_", "vuv_", "grl_")

    def __init__(self, task, pred_masked_weight: float, pred_nomask_weight: float,
                 loss_weights: Optional[List[float]] = None, log_keys: Optional[List[str]] = None,
                 spk_weight: float = 1.0, pitch_weight: float = 1.0, vuv_weight: float = 1.0) -> None:
        super().__init__(task, pred_masked_weight, pred_nomask_weight, loss_weights, log_keys)
        self.spk_weight, self.pitch_weight, self.vuv_weight = spk_weight, pitch_weight, vuv_weight

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True, log_pred: bool = False):
        net_output = model(target_list=sample["target_list"], **sample["net_input"], spk_id=sample.get("spk_id"))
        loss, sample_size, log = self.hubert_loss(model, net_output, sample)
        scale = float(max(sample_size, 1))
        nsent = sample["id"].numel()
        if "adv_weight" in net_output:
            log["grl_lambda"] = float(net_output["adv_weight"]) * nsent

        if "spk_logits" in net_output:
            if "spk_id" not in sample:
                raise KeyError("the model has a speaker head but the batch has no spk_id: set task.load_speaker=true")
            logits, spk_id = net_output["spk_logits"].float(), sample["spk_id"]
            owner = net_output.get("spk_owner")  # frame-level adversary: the utterance of each row
            if owner is None:
                ce_sum = F.cross_entropy(logits, spk_id, reduction="sum")
                term = self.spk_weight * ce_sum / nsent * scale
                utt_logits = logits
            else:  # mean over frames; logged CE and accuracy are per utterance (mean frame log-prob)
                term = self.spk_weight * F.cross_entropy(logits, spk_id[owner]) * scale
                utt_logits = utterance_log_probs(logits, owner, nsent)
                ce_sum = F.cross_entropy(utt_logits, spk_id, reduction="sum")
            loss = loss + term
            log["loss_spk"] = term.detach()
            log["spk_ce"] = ce_sum.detach()
            log["spk_correct"] = (utt_logits.argmax(-1) == spk_id).sum().detach()
            log["spk_count"] = nsent
            if "spk_confusion_logits" in net_output:  # encoder side of spk_adversary=confusion
                log_p = F.log_softmax(net_output["spk_confusion_logits"].float(), dim=-1)
                uniform_ce = -log_p.mean(-1).mean()  # >= log(n_speakers), reached at chance
                term_c = self.spk_weight * float(net_output["adv_weight"]) * uniform_ce * scale
                loss = loss + term_c
                log["loss_spk_confusion"] = term_c.detach()
            if "spk_memory_logits" in net_output:  # replayed, detached embeddings: trains the classifier only
                mem_ce = F.cross_entropy(net_output["spk_memory_logits"].float(), net_output["spk_memory_labels"])
                loss = loss + self.spk_weight * mem_ce * scale
                log["loss_spk_memory"] = (self.spk_weight * mem_ce * scale).detach()

        if "pitch_pred" in net_output:
            if "pitch" not in sample:
                raise KeyError("the model has a pitch head but the batch has no pitch: set task.load_pitch=true")
            pred = net_output["pitch_pred"].float()
            targets, valid = model.get_pitch_targets(net_output, sample["pitch"].float(), sample["pitch_lengths"])
            voiced = valid & (targets[..., 1] > 0.5)
            sq_sum = ((pred[..., 0] - targets[..., 0]) ** 2)[voiced].sum()
            n_voiced = int(voiced.sum())
            bce_sum = F.binary_cross_entropy_with_logits(pred[..., 1][valid], targets[..., 1][valid], reduction="sum")
            n_valid = int(valid.sum())
            term_p = self.pitch_weight * sq_sum / max(n_voiced, 1) * scale
            term_v = self.vuv_weight * bce_sum / max(n_valid, 1) * scale
            loss = loss + term_p + term_v
            log["loss_pitch"] = term_p.detach()
            log["loss_vuv"] = term_v.detach()
            log["pitch_sq_err"] = sq_sum.detach()
            log["pitch_voiced"] = n_voiced
            log["vuv_bce"] = bce_sum.detach()
            log["vuv_correct"] = ((pred[..., 1] > 0) == (targets[..., 1] > 0.5))[valid].sum().detach()
            log["vuv_count"] = n_valid
        log["loss"] = loss.detach()
        return loss, sample_size, log

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        super().reduce_metrics(logging_outputs)
        total: Dict[str, Any] = {}
        for lo in logging_outputs:
            for k, v in lo.items():
                total[k] = total.get(k, 0) + v
        nsent = total.get("nsentences", 0)
        if "grl_lambda" in total and nsent > 0:
            metrics.log_scalar("grl_lambda", total["grl_lambda"] / nsent, nsent, round=4)
        n = total.get("spk_count", 0)
        if n > 0:
            metrics.log_scalar("spk_ce", total["spk_ce"] / n, n, round=3)
            metrics.log_scalar("spk_acc", total["spk_correct"] / n, n, round=4)
        n = total.get("pitch_voiced", 0)
        if n > 0:
            metrics.log_scalar("pitch_mse", total["pitch_sq_err"] / n, n, round=4)
            metrics.log_derived("pitch_rmse", lambda meters: round(float(meters["pitch_mse"].avg) ** 0.5, 4))
        n = total.get("vuv_count", 0)
        if n > 0:
            metrics.log_scalar("vuv_bce", total["vuv_bce"] / n, n, round=4)
            metrics.log_scalar("vuv_acc", total["vuv_correct"] / n, n, round=4)
