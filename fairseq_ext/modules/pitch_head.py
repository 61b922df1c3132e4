"""The dhubert pitch head: a frame-level MLP predicting log F0 and voicing."""

import torch
from torch import nn


class PitchHead(nn.Module):
    """Frame-level pitch predictor: (B, T, C) -> (B, T, 2) = [log-F0 estimate, voicing logit].

    Args:
        in_dim: frame feature size C.
        hidden_dim: MLP hidden size.
        dropout: dropout before the output layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C). Returns (B, T, 2)."""
        return self.mlp(x)
