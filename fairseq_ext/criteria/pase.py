"""fairseq criterion ``pase``: the weighted sum of the PASE workers' losses, each logged separately."""


from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


@dataclass
class PaseCriterionConfig(FairseqDataclass):
    pass


@register_criterion("pase", dataclass=PaseCriterionConfig)
class PaseCriterion(FairseqCriterion):
    """``loss = sum_w weight_w * loss_w``; each worker loss is a mean over its batch elements.

    Logged per chunk (sums over chunks divided by ``sample_size``, the number of chunks):
    ``loss`` (weighted total), ``loss_<worker>`` (unweighted) and, for classifier workers,
    ``acc_<worker>`` (fraction of correctly classified pairs), and the throughput ``audio_s_per_s``
    (seconds of anchor audio per second, like fairseq's ``wps``). Logging outputs are plain sums, so
    distributed training on CPU works.
    """

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True):
        out = model(**sample["net_input"])
        n = sample["net_input"]["source"].size(0)
        total = 0.0
        logging_output: Dict[str, Any] = {
            "sample_size": n,
            "nsentences": sample.get("nsentences", n),
            "ntokens": sample.get("ntokens", 0),
            "audio_s": sample.get("ntokens", 0) / float(getattr(self.task.cfg, "sample_rate", 16000)),
            "_training": int(model.training),
        }
        for name, loss in out["losses"].items():
            weight = out["weights"][name]
            if weight != 0:
                total = total + weight * loss
            logging_output[f"loss_{name}"] = float(loss.detach()) * n
            extra = out["extras"].get(name) or {}
            if "count" in extra:
                logging_output[f"_correct_{name}"] = extra["correct"]
                logging_output[f"_count_{name}"] = extra["count"]
        if not torch.is_tensor(total):
            raise ValueError("every PASE worker has weight 0: nothing to train")
        loss = total * n
        logging_output["loss"] = float(loss.detach())
        return loss, n, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> None:
        def total(key: str) -> float:
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1), sample_size, round=4)
        if total("_training") > 0:  # seconds of (anchor) audio trained per second of wall-clock time
            metrics.log_speed("audio_s_per_s", total("audio_s"), priority=190, round=2)
        keys = sorted({k for log in logging_outputs for k in log})
        for key in keys:
            if key.startswith("loss_"):
                metrics.log_scalar(key, total(key) / max(sample_size, 1), sample_size, round=4)
            elif key.startswith("_count_"):
                name = key[len("_count_"):]
                count = total(key)
                if count > 0:
                    metrics.log_scalar(f"acc_{name}", total(f"_correct_{name}") / count, count, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
