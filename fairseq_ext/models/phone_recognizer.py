"""``phone_recognizer``: a frozen upstream and a small CTC head over its layers (SUPERB's PR downstream model).

The upstream (``model.upstream``: a checkpoint any registered :class:`~fairseq_ext.encoder.Upstream`
reads: fairseq HuBERT / wav2vec 2.0, fine-tuned HuBERT, this package's dhubert, ...) is loaded by the
task (:attr:`fairseq_ext.tasks.phone_recognition.PhoneRecognitionTask.upstream`) and frozen:
``requires_grad=False``, always in eval mode (``train()`` keeps it there), run under ``torch.no_grad``.
Only the head trains: :class:`~fairseq_ext.modules.ctc_head.CTCHead`, i.e. the softmax layer weights
(``layer=-1``), the BiLSTM (``lstm_layers``; 0 = linear) and the output projection.

The upstream's weights are saved in the checkpoint (under ``upstream_model.``); rebuilding the model
(evaluation) first loads ``model.upstream`` again, so keep that file available or override
``model.upstream``.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import MISSING

from fairseq_ext.encoder import Upstream
from fairseq_ext.modules.ctc_head import CTCHead, CTCHeadConfig

logger = logging.getLogger(__name__)


@dataclass
class PhoneRecognizerConfig(CTCHeadConfig):
    upstream: str = field(default=MISSING, metadata={
        "help": "frozen upstream: a checkpoint path (HuBERT, wav2vec 2.0, dhubert, ...)"})


@register_model("phone_recognizer", dataclass=PhoneRecognizerConfig)
class PhoneRecognizerModel(BaseFairseqModel):
    """Frozen upstream -> CTC head; see the module docstring.

    Args:
        cfg: the head's settings and the upstream path.
        upstream: the frozen upstream (its parameters are set to ``requires_grad=False`` here too).
        num_classes: ``V``, the phone dictionary's size (blank = index 0).
    """

    def __init__(self, cfg: PhoneRecognizerConfig, upstream: Upstream, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.upstream = upstream
        self.upstream_model = upstream.model  # registered: moves with .to() and is saved with the head
        for p in self.upstream_model.parameters():
            p.requires_grad_(False)
        self.head = CTCHead.build(cfg, upstream.dim, upstream.num_layers + 1, num_classes)
        self.upstream_model.eval()

    @classmethod
    def build_model(cls, cfg: PhoneRecognizerConfig, task) -> "PhoneRecognizerModel":
        return cls(cfg, task.upstream, len(task.target_dictionary))

    def train(self, mode: bool = True) -> "PhoneRecognizerModel":
        super().train(mode)
        self.upstream_model.eval()  # frozen: no dropout, no layer drop
        return self

    def layer_weights(self) -> torch.Tensor:
        """The softmax weight of each upstream hidden state, ``(L,)``."""
        return self.head.layer_sum.normalized_weights().detach()

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict:
        """
        Args:
            source: ``(B, S)`` waveforms, zero-padded on the right.
            padding_mask: ``(B, S)``, True on padding, or None.
        Returns:
            ``{"log_probs": (B, T, V) float32, "lengths": (B,) valid frames, "padding_mask": (B, T) or None}``.
        """
        with torch.no_grad():
            states, frame_mask = self.upstream(source, padding_mask)  # [(B, T, C)] * L, (B, T)
        log_probs, lengths = self.head(states, frame_mask)
        return {"log_probs": log_probs, "lengths": lengths, "padding_mask": frame_mask}

    def get_normalized_probs(self, net_output: Dict, log_probs: bool, sample: Optional[Dict] = None) -> torch.Tensor:
        """``(B, T, V)`` (log-)probabilities."""
        lp = net_output["log_probs"]
        return lp if log_probs else lp.exp()

    def max_positions(self):
        return None


__all__ = ["PhoneRecognizerConfig", "PhoneRecognizerModel"]
