"""A frozen encoder (any registered upstream: HuBERT, wav2vec 2.0, dhubert, PASE / PASE+, a log-Mel
front-end) as a front-end module.

With ``task.input_type=ssl`` the dataset yields raw audio and the speaker model runs a
:class:`FrozenSSLUpstream` first: ``model.ssl_checkpoint`` (a checkpoint path, or a named upstream
such as ``logmel:n_mels=80``) is read through the encoder interface
(:func:`fairseq_ext.encoder.load_upstream`: every hidden state from one padding-exact forward pass),
its parameters are frozen (``requires_grad=False``, always in eval mode, run under ``torch.no_grad``).
The features are one hidden state (``layer=k``: 0 is the Transformer's input, ``k`` the output of
layer ``k``) or a learned softmax-weighted sum of all of them (``layer=-1``,
:class:`~fairseq_ext.modules.layer_sum.WeightedLayerSum`; its weights are the only trained
parameters here). Running the upstream inside the model keeps it on the accelerator with the rest
of the network.

The upstream's weights are saved in the speaker checkpoint (under ``model.``); rebuilding the model
(inference) loads the SSL checkpoint path again first, so keep it available or override
``ssl_checkpoint``.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import torch.nn as nn

from fairseq_ext.base.errors import UserError
from fairseq_ext.encoder import load_upstream
from fairseq_ext.modules.layer_sum import WeightedLayerSum

logger = logging.getLogger(__name__)


class FrozenSSLUpstream(nn.Module):
    """A frozen SSL encoder exposing one hidden state or a learned weighted sum of all of them.

    Args:
        checkpoint: a checkpoint or upstream name :func:`fairseq_ext.encoder.load_upstream` reads
            (HuBERT, wav2vec 2.0, dhubert, PASE / PASE+, a speaker/KWS model's front-end, ``logmel``).
        layer: hidden state index in ``[0, num_layers]``, or ``-1`` for a learned weighted sum.
        sample_rate: the task's sample rate; must equal the checkpoint's.
    """

    def __init__(self, checkpoint: str, layer: int = -1, sample_rate: int = 16000):
        super().__init__()
        if not checkpoint:
            raise UserError("task.input_type=ssl needs model.ssl_checkpoint (an encoder checkpoint such as "
                            "HuBERT or PASE, or an upstream name such as logmel)")
        try:
            self.upstream = load_upstream(checkpoint)
        except UserError as e:
            raise UserError(f"model.ssl_checkpoint: {e}") from None
        if self.upstream.sample_rate != sample_rate:
            raise UserError(f"{checkpoint} was trained at {self.upstream.sample_rate} Hz but task.sample_rate "
                            f"is {sample_rate}")
        self.model = self.upstream.model  # the frozen weights, saved with the speaker model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.num_layers = self.upstream.num_layers
        if not -1 <= layer <= self.num_layers:
            raise UserError(f"model.ssl_layer={layer} but {checkpoint} has hidden states 0..{self.num_layers} "
                            f"(-1 = learned weighted sum)")
        self.layer = layer
        self.layer_sum = WeightedLayerSum(self.num_layers + 1) if layer == -1 else None
        self.dim = self.upstream.dim
        logger.info("frozen SSL upstream %s: %d layers, dim %d, %s", checkpoint, self.num_layers, self.dim,
                    "learned weighted sum of all hidden states" if layer == -1 else f"hidden state {layer}")

    @property
    def out_dim(self) -> int:
        return self.dim

    @property
    def layer_weights(self) -> Optional[nn.Parameter]:
        """The learned layer weights ``(num_layers + 1,)`` before the softmax (None for one layer)."""
        return None if self.layer_sum is None else self.layer_sum.weights

    def train(self, mode: bool = True) -> "FrozenSSLUpstream":
        super().train(mode)
        self.model.eval()  # frozen: no dropout, no layer drop
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = prefix + "layer_weights"  # speaker checkpoints from before the weights moved into layer_sum
        if old in state_dict:
            state_dict[prefix + "layer_sum.weights"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            wav: ``(B, S)`` waveform, zero-padded.
            padding_mask: ``(B, S)``, True on padding, or None.
        Returns:
            ``(feats, frame_padding_mask)``: ``(B, T, C)`` and ``(B, T)`` or None.
        """
        layers = None if self.layer_sum is not None else [self.layer]
        with torch.no_grad():
            states, frame_mask = self.upstream(wav, padding_mask, layers)
        if self.layer_sum is None:
            return states[0], frame_mask
        return self.layer_sum(states), frame_mask


__all__ = ["FrozenSSLUpstream"]
