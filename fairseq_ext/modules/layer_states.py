"""Hidden states after given layers of fairseq's wav2vec 2.0 / HuBERT ``TransformerEncoder``, read
from the ``layer_results`` its forward returns (no hooks, no second pass).

``TransformerEncoder.forward(x, padding_mask, layer)`` returns ``(x, layer_results)``, one
``(x (T, B, C), attn, layer_result)`` per layer that ran. With LayerDrop (``encoder.layerdrop > 0``)
fairseq draws ``np.random.random()`` once per layer from NumPy's global generator and skips the
layers whose draw is ``<= layerdrop`` (training only), so ``layer_results`` alone does not say which
layers ran: :func:`layers_run` replays those draws from the generator state taken just before the
encoder ran.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


def layers_run(n_layers: int, layerdrop: float, training: bool, np_state: Optional[tuple],
               stop_after: Optional[int] = None) -> List[bool]:
    """Which of the ``n_layers`` layers ran in one encoder pass.

    Args:
        n_layers: layers in the stack.
        layerdrop: the encoder's ``layerdrop``.
        training: the encoder's ``training`` flag during the pass.
        np_state: ``np.random.get_state()`` taken just before the pass (needed when layerdrop > 0).
        stop_after: 0-based layer the pass stopped after (``layer=`` of the encoder), or None.
    Returns:
        one bool per layer (the layers after ``stop_after`` are False).
    """
    last = n_layers - 1 if stop_after is None else min(stop_after, n_layers - 1)
    if layerdrop <= 0:
        return [i <= last for i in range(n_layers)]
    if np_state is None:
        raise ValueError("layers_run needs the NumPy generator state taken before the pass when layerdrop > 0")
    replay = np.random.RandomState()
    replay.set_state(np_state)
    ran = []
    for i in range(n_layers):
        ran.append(i <= last and (not training or replay.random_sample() > layerdrop))
    return ran


def state_after(layer_results: Sequence[Tuple[torch.Tensor, ...]], ran: Sequence[bool], k: int,
                final: torch.Tensor) -> torch.Tensor:
    """Residual stream after layer ``k`` (0-based): (B, T, C).

    The output of layer ``k`` if it ran, else of the last layer before it that ran (LayerDrop
    passes a skipped layer's input through); if none of layers ``0..k`` ran, ``final`` (the
    encoder's output, (B, T, C)).

    Args:
        layer_results: the encoder's ``layer_results``, ``(x (T, B, C), ...)`` per layer that ran.
        ran: :func:`layers_run` of the same pass.
        final: the encoder's output (B, T, C).
    """
    if sum(ran) != len(layer_results):
        raise RuntimeError(f"{len(layer_results)} layer results but {sum(ran)} layers ran: did something "
                           f"else draw from NumPy's global generator during the encoder pass?")
    position = sum(ran[:k + 1]) - 1  # index in layer_results of the last layer <= k that ran
    if position < 0:
        return final
    return layer_results[position][0].transpose(0, 1)
