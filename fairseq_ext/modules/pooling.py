"""Utterance-level pooling over padded frame sequences: masked mean, self-attention, attentive
(MLP-scored) mean, attentive statistics.

Every pooling takes frames ``x`` of shape ``(B, T, C)`` and a ``padding_mask`` of shape ``(B, T)``
(True on padded frames, or None when nothing is padded) and returns ``(B, out_dim)``. Padded
frames get exactly zero weight, so an utterance's pooled vector does not depend on how much
padding its batch had; a sequence without any real frame pools to zeros.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

POOLING_CHOICES = ("mean", "self_attention", "attentive", "attentive_stats")


def valid_mask(x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Float mask ``(B, T, 1)``: 1 on real frames, 0 on padding."""
    if padding_mask is None:
        return x.new_ones(x.shape[0], x.shape[1], 1)
    if padding_mask.shape != x.shape[:2]:
        raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)}, expected {tuple(x.shape[:2])}")
    return (~padding_mask).unsqueeze(-1).to(x.dtype)


def masked_mean(x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the real frames of each utterance.

    Args:
        x: frames ``(B, T, C)``.
        padding_mask: ``(B, T)``, True on padding (or None).
    Returns:
        ``(B, C)``.
    """
    m = valid_mask(x, padding_mask)
    return zero_padding(x, padding_mask).sum(1) / m.sum(1).clamp(min=1.0)


def zero_padding(x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` ``(B, T, C)`` with padded frames set to 0 (also NaN/inf ones, unlike multiplying by a mask)."""
    if padding_mask is None:
        return x
    return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def masked_softmax(scores: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax over time of ``scores`` ``(B, T, K)`` with padded frames set to exactly 0 weight
    (a row that is all padding gets all-zero weights, not NaN)."""
    if padding_mask is None:
        return torch.softmax(scores.float(), dim=1).to(scores.dtype)
    dtype, pad = scores.dtype, padding_mask.unsqueeze(-1)  # pad: (B, T, 1)
    empty = padding_mask.all(1)[:, None, None]  # (B, 1, 1)
    scores = scores.float().masked_fill(pad & ~empty, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(scores, dim=1).masked_fill(pad, 0.0).to(dtype)


class MeanPooling(nn.Module):
    """Masked mean over time: ``(B, T, C) -> (B, C)`` (the homework sample code's pooling)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return masked_mean(x, padding_mask)


class SelfAttentionPooling(nn.Module):
    """Self-attention pooling (Safari et al. 2020): a learned score per frame, softmax over real frames.

    ``w_t = softmax_t(v^T x_t)``, output ``sum_t w_t x_t``: ``(B, T, C) -> (B, C)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.out_dim = dim

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = zero_padding(x, padding_mask)
        w = masked_softmax(self.score(x), padding_mask)  # (B, T, 1)
        return (w * x).sum(1)


class AttentivePooling(nn.Module):
    """Attentive pooling: a one-hidden-layer tanh network scores each frame, softmax over real
    frames, weighted mean: ``(B, T, C) -> (B, C)``.

    Args:
        dim: feature size C.
        hidden: hidden size of the scoring network.
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.out_dim = dim

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = zero_padding(x, padding_mask)
        w = masked_softmax(self.score(x), padding_mask)  # (B, T, 1)
        return (w * x).sum(1)


class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018): attention-weighted mean and std.

    Scores come from a one-hidden-layer tanh network per frame; output is ``[mean, std]``:
    ``(B, T, C) -> (B, 2C)``.
    """

    def __init__(self, dim: int, hidden: int = 128, eps: float = 1e-5):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.eps = eps
        self.out_dim = 2 * dim

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = zero_padding(x, padding_mask)
        w = masked_softmax(self.attention(x), padding_mask)  # (B, T, 1)
        mean = (w * x).sum(1)
        var = (w * (x - mean.unsqueeze(1)).pow(2)).sum(1)
        return torch.cat([mean, (var + self.eps).sqrt()], dim=-1)


def build_pooling(name: str, dim: int, hidden: int = 128) -> nn.Module:
    """Pooling module by name (one of :data:`POOLING_CHOICES`); ``.out_dim`` is its output size.
    ``hidden`` is the scoring network's size for ``attentive`` and ``attentive_stats``."""
    if name == "mean":
        return MeanPooling(dim)
    if name == "self_attention":
        return SelfAttentionPooling(dim)
    if name == "attentive":
        return AttentivePooling(dim, hidden)
    if name == "attentive_stats":
        return AttentiveStatisticsPooling(dim, hidden)
    raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLING_CHOICES)}")


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, T)`` bool mask, True on padding."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


__all__ = [
    "POOLING_CHOICES", "MeanPooling", "SelfAttentionPooling", "AttentivePooling", "AttentiveStatisticsPooling",
    "build_pooling", "masked_mean", "masked_softmax", "zero_padding", "valid_mask", "lengths_to_padding_mask",
]
