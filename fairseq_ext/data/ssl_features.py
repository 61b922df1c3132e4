"""Frozen self-supervised features (HuBERT, wav2vec 2.0, this package's models) computed on the fly.

With ``task.input_type=ssl`` the dataset yields raw audio (``AudioUtteranceDataset``) and the
speaker model runs a :class:`FrozenSSLUpstream` first: the SSL checkpoint is loaded with
``fairseq_ext.load_model``, its parameters are frozen (``requires_grad=False``, always in eval
mode, run under ``torch.no_grad``), and its hidden states are read with forward hooks on the
Transformer layers. The features are one hidden state (``layer=k``: 0 is the Transformer's input,
``k`` the output of layer ``k``) or a learned softmax-weighted sum of all of them
(``layer=-1``; the weights are the only trained parameters here). Running the upstream inside the
model keeps it on the accelerator with the rest of the network.

The upstream's weights are saved in the speaker checkpoint; rebuilding the model (inference)
loads the SSL checkpoint path again first, so keep it available or override ``ssl_checkpoint``.
"""

from __future__ import annotations

import inspect
import logging
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_ext.base.errors import UserError

logger = logging.getLogger(__name__)


class FrozenSSLUpstream(nn.Module):
    """A frozen SSL encoder exposing one hidden state or a learned weighted sum of all of them.

    Args:
        checkpoint: fairseq checkpoint of a model with ``extract_features`` and
            ``encoder.layers`` (HuBERT, wav2vec 2.0, data2vec audio, this package's HuBERT variants).
        layer: hidden state index in ``[0, num_layers]``, or ``-1`` for a learned weighted sum.
        sample_rate: the task's sample rate; must equal the checkpoint's.
    """

    def __init__(self, checkpoint: str, layer: int = -1, sample_rate: int = 16000):
        super().__init__()
        import os

        from fairseq_ext.checkpoint import load_model

        if not checkpoint:
            raise UserError("task.input_type=ssl needs model.ssl_checkpoint (a HuBERT-style checkpoint)")
        if not os.path.isfile(checkpoint):
            raise UserError(f"SSL checkpoint {checkpoint} does not exist (model.ssl_checkpoint)")
        model, cfg, _ = load_model(checkpoint)
        encoder = getattr(model, "encoder", None)
        if not hasattr(model, "extract_features") or not hasattr(encoder, "layers"):
            raise UserError(f"{checkpoint}: {type(model).__name__} has no extract_features/encoder.layers; "
                            f"use a HuBERT / wav2vec 2.0 style checkpoint")
        ckpt_sr = getattr(cfg.task, "sample_rate", sample_rate)
        if ckpt_sr != sample_rate:
            raise UserError(f"{checkpoint} was trained at {ckpt_sr} Hz but task.sample_rate is {sample_rate}")
        self.normalize = bool(getattr(cfg.task, "normalize", False))
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()
        self.num_layers = len(encoder.layers)
        params = inspect.signature(model.extract_features).parameters
        self._layer_kw = "output_layer" if "output_layer" in params else "layer"
        if not -1 <= layer <= self.num_layers:
            raise UserError(f"model.ssl_layer={layer} but {checkpoint} has hidden states 0..{self.num_layers} "
                            f"(-1 = learned weighted sum)")
        self.layer = layer
        self.layer_weights = nn.Parameter(torch.zeros(self.num_layers + 1)) if layer == -1 else None
        with torch.no_grad():
            states, _ = self.hidden_states(torch.zeros(1, sample_rate), None)
        self.dim = int(states[-1].shape[-1])
        logger.info("frozen SSL upstream %s: %d layers, dim %d, %s", checkpoint, self.num_layers, self.dim,
                    "learned weighted sum of all hidden states" if layer == -1 else f"hidden state {layer}")

    @property
    def out_dim(self) -> int:
        return self.dim

    def train(self, mode: bool = True) -> "FrozenSSLUpstream":
        super().train(mode)
        self.model.eval()  # frozen: no dropout, no layer drop
        return self

    def _normalize(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-utterance zero mean / unit variance over real samples (the upstream task's ``normalize``)."""
        if padding_mask is None:
            return F.layer_norm(wav, wav.shape[-1:])
        valid = (~padding_mask).to(wav.dtype)
        n = valid.sum(1, keepdim=True).clamp(min=1)
        mean = (wav * valid).sum(1, keepdim=True) / n
        var = ((wav - mean).pow(2) * valid).sum(1, keepdim=True) / n
        return ((wav - mean) * torch.rsqrt(var + 1e-5)) * valid

    def hidden_states(
        self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """Run the frozen encoder; returns hidden states ``[(B, T, C)] * n`` and the frame mask ``(B, T)``."""
        layers = self.model.encoder.layers
        states: List[torch.Tensor] = []
        hooks = [layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
        hooks += [layer.register_forward_hook(lambda m, args, out: states.append(out[0])) for layer in layers]
        last = self.num_layers if self.layer == -1 else max(self.layer, 1)
        layer_arg = last if self._layer_kw == "output_layer" else last - 1
        if self.normalize:
            wav = self._normalize(wav, padding_mask)
        try:
            out = self.model.extract_features(wav, padding_mask=padding_mask, mask=False,
                                              **{self._layer_kw: layer_arg})
        finally:
            for h in hooks:
                h.remove()
        if isinstance(out, dict):
            feats, frame_mask = out["x"], out.get("padding_mask")
        else:
            feats, frame_mask = out
        n_frames = feats.shape[1]
        states = [s.transpose(0, 1)[:, :n_frames] for s in states]  # (T, B, C) -> (B, T, C)
        if frame_mask is not None:
            frame_mask = frame_mask[:, :n_frames]
            if not frame_mask.any():
                frame_mask = None
        return states, frame_mask

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
        with torch.no_grad():
            states, frame_mask = self.hidden_states(wav, padding_mask)
        if self.layer_weights is None:
            return states[self.layer], frame_mask
        w = torch.softmax(self.layer_weights.float(), dim=0).to(states[0].dtype)
        return (torch.stack(states, dim=0) * w[:, None, None, None]).sum(0), frame_mask


__all__ = ["FrozenSSLUpstream"]
