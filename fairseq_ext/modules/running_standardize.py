"""Per-channel standardisation of vectors with running (exponential moving average) statistics.

Used in front of the dhubert speaker adversary: the adversary then sees its input on the scale a
standardising probe sees it, so the encoder cannot hide speaker cues from it merely by shrinking
the directions that carry them (the reversed gradient through ``(x - mean) / std`` grows as a
direction shrinks). The statistics are buffers updated without gradient in training mode only;
the gradient flows through the normalisation with the statistics held constant.
"""

import torch
from torch import nn


class RunningStandardize(nn.Module):
    """``(B, C) -> (B, C)``: ``(x - running_mean) / sqrt(running_var + eps)``.

    In training mode each call first merges the batch into the running statistics: a cumulative
    average over the first ``1 / momentum`` batches, then an exponential moving average with
    ``momentum`` (so the first batches are not dominated by the initial values).

    Args:
        dim: number of channels C.
        momentum: weight of a new batch once past the cumulative start (0 < momentum <= 1).
        eps: added to the variance.
    """

    def __init__(self, dim: int, momentum: float = 0.02, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the rows of ``x`` ``(B, C)`` into the running statistics."""
        if x.size(0) == 0:
            return
        x = x.detach().float()
        rate = max(self.momentum, 1.0 / float(self.num_batches + 1))
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        shift = mean - self.running_mean
        # variance of the mixture (1 - rate) * old + rate * batch, computed about the means (no
        # cancellation when the mean is large next to the spread)
        self.running_var.mul_(1.0 - rate).add_(rate * var + rate * (1.0 - rate) * shift ** 2)
        self.running_mean.add_(rate * shift)
        self.num_batches.add_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C). Returns (B, C), standardised with the (updated, in training) statistics."""
        if self.training:
            self.update(x)
        scale = torch.rsqrt(self.running_var + self.eps).to(x.dtype)
        return (x - self.running_mean.to(x.dtype)) * scale

    def extra_repr(self) -> str:
        return f"{self.running_mean.numel()}, momentum={self.momentum}, eps={self.eps}"
