"""The phone-recognition downstream head: weighted sum of an upstream's layers, a small BiLSTM, CTC outputs.

SUPERB's PR recipe on a frozen upstream: the ``L`` hidden states ``(B, T, C)`` are combined with
learnable softmax weights (:class:`~fairseq_ext.modules.layer_sum.WeightedLayerSum`), then a
bidirectional LSTM (``lstm_layers`` layers of ``lstm_hidden`` units per direction; 0 layers makes the
head linear) and a linear projection give log-probabilities over the phone dictionary, whose
``<s>`` (index 0) is the CTC blank (:mod:`fairseq_ext.data.phone_transcripts`).

Padded frames never reach a valid frame: the LSTM runs on packed sequences, the layer sum and the
projection are per frame. So an utterance's outputs do not depend on the padding of its batch.
The output frame rate is the upstream's (no down-sampling): output lengths are the input lengths.
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fairseq_ext.modules.layer_sum import HiddenStates, WeightedLayerSum


@dataclass
class CTCHeadConfig(FairseqDataclass):
    layer: int = field(default=-1, metadata={
        "help": "upstream hidden state the head reads; -1 = learnable softmax-weighted sum of all of them"})
    layer_norm: bool = field(default=False, metadata={
        "help": "layer-normalise each hidden state per frame (no affine) before the weighted sum"})
    lstm_layers: int = field(default=1, metadata={"help": "BiLSTM layers (0 = linear head)"})
    lstm_hidden: int = field(default=128, metadata={"help": "BiLSTM units per direction"})
    dropout: float = field(default=0.1, metadata={
        "help": "dropout on the combined features and between/after the BiLSTM layers"})


class CTCHead(nn.Module):
    """Weighted layer sum -> BiLSTM -> linear -> log-softmax.

    Args:
        input_dim: ``C``, the upstream's feature size.
        num_hidden_states: ``L``, how many hidden states the upstream gives.
        num_classes: ``V``, output classes including the blank (``len(dictionary)``).
        layer, layer_norm, lstm_layers, lstm_hidden, dropout: see :class:`CTCHeadConfig`.
    """

    def __init__(self, input_dim: int, num_hidden_states: int, num_classes: int, layer: int = -1,
                 layer_norm: bool = False, lstm_layers: int = 1, lstm_hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        if lstm_layers < 0 or (lstm_layers and lstm_hidden < 1):
            raise ValueError(f"lstm_layers={lstm_layers}, lstm_hidden={lstm_hidden}: need lstm_layers >= 0 "
                             f"and lstm_hidden >= 1")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: need the blank and at least one phone")
        self.layer_sum = WeightedLayerSum(num_hidden_states, layer=layer, layer_norm=layer_norm)
        self.dropout = nn.Dropout(dropout)
        self.lstm = (nn.LSTM(input_dim, lstm_hidden, num_layers=lstm_layers, batch_first=True, bidirectional=True,
                             dropout=dropout if lstm_layers > 1 else 0.0) if lstm_layers else None)
        self.proj = nn.Linear(2 * lstm_hidden if lstm_layers else input_dim, num_classes)

    @classmethod
    def build(cls, cfg: CTCHeadConfig, input_dim: int, num_hidden_states: int, num_classes: int) -> "CTCHead":
        return cls(input_dim, num_hidden_states, num_classes, layer=cfg.layer, layer_norm=cfg.layer_norm,
                   lstm_layers=cfg.lstm_layers, lstm_hidden=cfg.lstm_hidden, dropout=cfg.dropout)

    def forward(
        self, hidden_states: HiddenStates, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            hidden_states: ``(L, B, T, C)`` or ``L`` tensors ``(B, T, C)``.
            padding_mask: ``(B, T)``, True on padded frames, or None.
        Returns:
            ``(log_probs, lengths)``: float32 ``(B, T, V)`` log-probabilities (values on padded frames
            are meaningless) and ``(B,)`` int64 valid frames per utterance.
        """
        x = self.layer_sum(hidden_states)  # (B, T, C)
        B, T, _ = x.shape
        if padding_mask is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
        else:
            if padding_mask.shape != (B, T):
                raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)}, expected {(B, T)}")
            lengths = (~padding_mask).sum(dim=1).long()
            if (lengths == 0).any():
                raise ValueError("an utterance of the batch has no valid frame")
        x = self.dropout(x)
        if self.lstm is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=T)  # (B, T, 2H)
            x = self.dropout(x)
        logits = self.proj(x)  # (B, T, V)
        return torch.log_softmax(logits.float(), dim=-1), lengths


__all__ = ["CTCHead", "CTCHeadConfig"]
