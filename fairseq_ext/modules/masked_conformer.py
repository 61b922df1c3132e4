"""A padding-safe Conformer layer: fairseq's ``ConformerEncoderLayer`` with padded frames masked out.

fairseq's layer takes a key-padding mask for self-attention but its convolution module does not:
the depthwise convolution mixes padded frames into the last ``kernel // 2`` real frames, and in
training mode BatchNorm's batch statistics include the padded frames. An utterance's output then
depends on how long the other utterances of its batch were (up to 0.08 absolute difference in
eval mode for a 30-frame utterance padded to 50 frames, see REFERENCE.md).

:class:`MaskedConformerEncoderLayer` keeps fairseq's parameters (same module names, so state
dicts are interchangeable) and re-runs its sub-modules in the same order, with two changes:

* padded frames are set to zero right before the depthwise convolution, so the convolution sees
  exactly the zero padding it would see for the utterance alone;
* in training mode, BatchNorm statistics are computed over real frames only (and the running
  statistics are updated from those); in eval mode BatchNorm is per-frame and unchanged.

With these, the real frames of an utterance are identical (up to float rounding) whether it is
processed alone or in a padded batch.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from fairseq.modules.conformer_layer import ConformerEncoderLayer


def masked_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """BatchNorm over channels of ``x`` ``(B, C, T)`` whose training statistics skip padded frames.

    Args:
        bn: the BatchNorm1d whose parameters and running statistics are used (and updated).
        x: ``(B, C, T)``.
        padding_mask: ``(B, T)``, True on padding, or None.
    Returns:
        ``(B, C, T)``.
    """
    if not bn.training or padding_mask is None or not bn.track_running_stats:
        return bn(x)
    valid = ~padding_mask
    n = int(valid.sum())
    if n < 2:
        return bn(x)
    frames = x.transpose(1, 2)[valid].float()  # (N, C)
    mean = frames.mean(0)
    var = frames.var(0, unbiased=False)
    with torch.no_grad():
        bn.num_batches_tracked += 1
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - momentum).add_(mean.detach().to(bn.running_mean.dtype), alpha=momentum)
        unbiased = var.detach() * (n / (n - 1))
        bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    y = (x.float() - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + bn.eps)
    if bn.affine:
        y = y * bn.weight[None, :, None] + bn.bias[None, :, None]
    return y.to(x.dtype)


class MaskedConformerEncoderLayer(ConformerEncoderLayer):
    """fairseq's Conformer block (macaron FFN, MHSA, conv module, FFN, LayerNorm) made padding-safe.

    Constructor arguments are fairseq's (``embed_dim, ffn_embed_dim, attention_heads, dropout,
    use_fp16, depthwise_conv_kernel_size, activation_fn``); only fairseq's own multi-head attention
    without positional encodings (``attn_type=None``, ``pos_enc_type="abs"``) is supported here.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("attn_type") not in (None,) or kwargs.get("pos_enc_type", "abs") != "abs":
            raise ValueError("MaskedConformerEncoderLayer supports attn_type=None, pos_enc_type='abs' only")
        super().__init__(*args, **kwargs)

    def conv_block(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """fairseq's ``ConvolutionModule`` with padded frames zeroed before the depthwise conv.

        Args:
            x: ``(B, T, C)``.
            padding_mask: ``(B, T)``, True on padding, or None.
        Returns:
            ``(B, T, C)``.
        """
        cm = self.conv_module
        x = cm.layer_norm(x).transpose(1, 2)  # (B, C, T)
        x = cm.glu(cm.pointwise_conv1(x))
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(1), 0.0)
        x = cm.depthwise_conv(x)
        x = masked_batch_norm(cm.batch_norm, x, padding_mask)
        x = cm.activation(x)
        x = cm.dropout(cm.pointwise_conv2(x))
        return x.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        encoder_padding_mask: Optional[torch.Tensor],
        position_emb: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Tuple[Optional[torch.Tensor], torch.Tensor]]:
        """
        Args:
            x: ``(T, B, C)``.
            encoder_padding_mask: ``(B, T)``, True on padding, or None.
            position_emb: unused (absolute/no positional encoding), kept for fairseq's signature.
        Returns:
            ``(x, (None, ffn2_output))``: ``x`` of shape ``(T, B, C)`` with padded frames set to 0.
        """
        if encoder_padding_mask is not None and not encoder_padding_mask.any():
            encoder_padding_mask = None
        residual = x
        x = self.ffn1(x) * 0.5 + residual
        residual = x
        x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(query=x, key=x, value=x, key_padding_mask=encoder_padding_mask, need_weights=False)
        x = self.self_attn_dropout(x) + residual
        residual = x
        x = self.conv_block(x.transpose(0, 1), encoder_padding_mask).transpose(0, 1) + residual
        residual = x
        layer_result = self.ffn2(x)
        x = self.final_layer_norm(layer_result * 0.5 + residual)
        if encoder_padding_mask is not None:
            x = x.masked_fill(encoder_padding_mask.transpose(0, 1).unsqueeze(-1), 0.0)
        return x, (None, layer_result)


__all__ = ["MaskedConformerEncoderLayer", "masked_batch_norm"]
