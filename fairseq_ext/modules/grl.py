"""Gradient-reversal layer (GRL) and the schedules of the adversaries' weight.

The GRL is the identity in the forward pass and multiplies the incoming gradient by ``-lambda``
in the backward pass (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation").
A classifier placed behind it learns to predict its target normally, while everything in front
of it (the encoder) receives the reversed gradient and learns to remove that information.

Schedules of an adversary's weight ``w`` (the GRL's strength lambda, or the weight of the
confusion loss) as a function of the number of updates ``u``:

- ``constant``: ``w_max``.
- ``dann``: ``w_max * (2 / (1 + exp(-10 p)) - 1)`` with ``p = min(u / horizon, 1)``
  (the DANN paper's ramp; 0 at the start, ~0.987 * w_max at ``p = 0.5``).
- ``linear``: ``w_max * min(u / horizon, 1)`` (ContentVec-style ramp).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

ADV_SCHEDULES: Tuple[str, ...] = ("constant", "dann", "linear")


class _ReverseGrad(torch.autograd.Function):
    """Forward: identity. Backward: ``-scale * grad``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad.neg() * ctx.scale, None


def reverse_grad(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    """Identity on ``x`` whose gradient is multiplied by ``-lambda_``."""
    return _ReverseGrad.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """Gradient-reversal layer with a settable strength.

    Args:
        lambda_: initial strength; the owner updates :attr:`lambda_` as training progresses.
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: any shape, e.g. (B, T, C); returns ``x`` unchanged (reversed gradient)."""
        return reverse_grad(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_:g}"


def scheduled_weight(schedule: str, num_updates: int, max_weight: float, horizon: int) -> float:
    """An adversary's weight (GRL strength) after ``num_updates`` updates.

    Args:
        schedule: one of :data:`ADV_SCHEDULES`.
        num_updates: updates done so far (>= 0).
        max_weight: the final weight.
        horizon: number of updates over which ``dann``/``linear`` ramp up (> 0 for them;
            ignored by ``constant``).
    Returns:
        the weight as a float in ``[0, max_weight]``.
    """
    if schedule == "constant":
        return float(max_weight)
    if schedule not in ADV_SCHEDULES:
        raise ValueError(f"unknown adversary schedule {schedule!r}; choose one of {', '.join(ADV_SCHEDULES)}")
    if horizon <= 0:
        raise ValueError(f"adversary schedule {schedule!r} needs a positive ramp length, got {horizon}")
    p = min(max(num_updates, 0) / horizon, 1.0)
    if schedule == "dann":
        return float(max_weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0))
    return float(max_weight * p)
