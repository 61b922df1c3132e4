"""Pooling of frame sequences over their valid (non-padded) frames only.

Padded frames never influence the result, so an utterance pooled alone and the same utterance
pooled inside a padded batch give the same vector.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from fairseq_ext.modules.pooling import masked_mean, valid_mask

POOLING_CHOICES: Tuple[str, ...] = ("mean", "attentive")


class MaskedMeanPooling(nn.Module):
    """Mean over valid frames: (B, T, C) -> (B, C). A sequence with no valid frame pools to 0."""

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, C); padding_mask: (B, T) bool, True = padding. Returns (B, C)."""
        return masked_mean(x, padding_mask)


class AttentivePooling(nn.Module):
    """Self-attentive pooling: softmax over valid frames of a learned score, weighted mean.

    Args:
        in_dim: feature size C.
        hidden_dim: size of the scoring MLP's hidden layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, C); padding_mask: (B, T) bool, True = padding. Returns (B, C)."""
        valid = valid_mask(x, padding_mask).squeeze(-1) > 0  # (B, T)
        logits = self.score(x).squeeze(-1).float()  # (B, T)
        logits = logits.masked_fill(~valid, float("-inf"))
        # rows without any valid frame would be all -inf: give them zero weights instead of NaN
        empty = ~valid.any(1, keepdim=True)
        logits = logits.masked_fill(empty, 0.0)
        w = torch.softmax(logits, dim=1) * valid.to(logits.dtype)
        return torch.einsum("bt,btc->bc", w.to(x.dtype), x)


def build_pooling(kind: str, in_dim: int, hidden_dim: int = 128) -> nn.Module:
    """``"mean"`` -> :class:`MaskedMeanPooling`, ``"attentive"`` -> :class:`AttentivePooling`."""
    if kind == "mean":
        return MaskedMeanPooling()
    if kind == "attentive":
        return AttentivePooling(in_dim, hidden_dim)
    raise ValueError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLING_CHOICES)}")
