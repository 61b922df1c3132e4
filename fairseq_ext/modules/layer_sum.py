"""SUPERB's weighted sum of an upstream's hidden states: learnable softmax-normalised layer weights.

The downstream heads read an upstream's ``L`` hidden states (for HuBERT: the CNN output projected into
the Transformer, then each layer's output) either as a learned convex combination (``layer=-1``, the
weights start equal) or as one chosen hidden state (``layer=k``, nothing learned). With
``layer_norm=True`` each hidden state is layer-normalised per frame (no learned affine) before the sum,
so layers of very different scales weigh by their weights, not by their norms.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

HiddenStates = Union[torch.Tensor, Sequence[torch.Tensor]]
"""``(L, B, T, C)`` tensor, or a sequence of ``L`` tensors ``(B, T, C)``."""


def stack_hidden_states(hidden_states: HiddenStates) -> torch.Tensor:
    """``hidden_states`` as one ``(L, B, T, C)`` tensor."""
    if isinstance(hidden_states, torch.Tensor):
        if hidden_states.dim() != 4:
            raise ValueError(f"hidden states must be (L, B, T, C), got shape {tuple(hidden_states.shape)}")
        return hidden_states
    shapes = {tuple(h.shape) for h in hidden_states}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"hidden states must be L tensors of one shape (B, T, C), got shapes {sorted(shapes)}")
    return torch.stack(list(hidden_states), dim=0)


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum of ``num_layers`` hidden states, or one of them.

    Args:
        num_layers: ``L``, the number of hidden states the upstream gives.
        layer: ``-1`` for the learned weighted sum, or the index ``0 <= layer < L`` of one hidden state.
        layer_norm: layer-normalise each hidden state per frame before combining.
    """

    def __init__(self, num_layers: int, layer: int = -1, layer_norm: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not -1 <= layer < num_layers:
            raise ValueError(f"layer={layer} but the upstream has hidden states 0..{num_layers - 1} "
                             f"(-1 = learned weighted sum)")
        self.num_layers = num_layers
        self.layer = layer
        self.layer_norm = layer_norm
        self.weights = nn.Parameter(torch.zeros(num_layers)) if layer == -1 else None

    def normalized_weights(self) -> torch.Tensor:
        """The weight of each hidden state, ``(L,)``, summing to 1 (one-hot for a single layer)."""
        if self.weights is None:
            w = torch.zeros(self.num_layers)
            w[self.layer] = 1.0
            return w
        return torch.softmax(self.weights.float(), dim=0)

    def forward(self, hidden_states: HiddenStates) -> torch.Tensor:
        """
        Args:
            hidden_states: ``(L, B, T, C)`` or ``L`` tensors ``(B, T, C)``.
        Returns:
            ``(B, T, C)``.
        """
        if len(hidden_states) != self.num_layers:
            raise ValueError(f"got {len(hidden_states)} hidden states, expected {self.num_layers}")
        if self.weights is None:
            x = hidden_states[self.layer]
            return F.layer_norm(x, x.shape[-1:]) if self.layer_norm else x
        x = stack_hidden_states(hidden_states)
        if self.layer_norm:
            x = F.layer_norm(x, x.shape[-1:])
        w = torch.softmax(self.weights.float(), dim=0).to(x.dtype)
        return (x * w[:, None, None, None]).sum(dim=0)


__all__ = ["HiddenStates", "WeightedLayerSum", "stack_hidden_states"]
