"""PASE / PASE+ waveform encoder: SincNet block, strided conv blocks, optional RNN and dense skips.

Layout (defaults = PASE): a SincNet band-pass block (64 filters, kernel 251, stride 1), then
Conv1d-BatchNorm-PReLU blocks with kernels ``[20, 11, 11, 11, 11, 11, 11]``, strides
``[10, 2, 1, 2, 1, 2, 2]`` and channels ``[64, 128, 128, 256, 256, 512, 512]`` (total stride
160: 100 frames per second at 16 kHz), a 1x1 projection to ``emb_dim`` and a BatchNorm1d without
affine parameters. PASE+ adds a recurrent layer before the projection and dense skip connections
(each conv block projected to ``emb_dim``, average-pooled to the output rate, and summed in).

Every layer is padded so that a block of stride ``s`` maps ``L`` steps to ``L // s``: the encoder
maps ``T`` samples to exactly ``T // 160`` frames, frame ``i`` covering samples
``[160 i, 160 i + 160)``. When a padding mask is given, activations past each utterance's end are
zeroed after every block, so an utterance's features do not depend on how much it was padded in
its batch (in eval mode).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_ext.modules.sincnet import SincConv1d


def _same_pad(kernel_size: int, stride: int) -> Tuple[int, int]:
    """(left, right) padding that maps L steps to L // stride."""
    if kernel_size < stride:
        raise ValueError(f"kernel size {kernel_size} must be >= stride {stride}")
    total = kernel_size - stride
    return total // 2, total - total // 2


def _mask_steps(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero ``x`` ``(B, C, L)`` at steps ``>= lengths`` ``(B,)``."""
    if lengths is None:
        return x
    steps = torch.arange(x.size(-1), device=x.device)
    return x * (steps.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).to(x.dtype)


class EncoderBlock(nn.Module):
    """Padded conv (SincNet or plain) -> BatchNorm1d -> PReLU. ``(B, C_in, L) -> (B, C_out, L // stride)``."""

    def __init__(self, conv: nn.Module, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = conv
        self.pad = _same_pad(kernel_size, stride)
        self.stride = stride
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(F.pad(x, self.pad))))


class PaseEncoder(nn.Module):
    """PASE waveform encoder.

    Args:
        sample_rate: input sample rate (Hz).
        sinc_filters, sinc_kernel_size, sinc_min_low_hz, sinc_min_band_hz: the SincNet block.
        conv_channels, conv_kernel_sizes, conv_strides: the conv blocks after the SincNet block.
        emb_dim: output dimension (100 for PASE, 256 for PASE+).
        rnn_type: ``"none"``, ``"lstm"`` or ``"gru"`` (PASE+ uses a recurrent layer).
        rnn_hidden_dim, rnn_layers, rnn_bidirectional: the recurrent layer.
        dense_skips: PASE+ dense skip connections from every conv block into the output.
    Shapes:
        ``forward(wav (B, T), padding_mask (B, T) bool, True = padded)`` ->
        ``(emb (B, emb_dim, T // hop), frame_padding_mask (B, T // hop) or None)``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        sinc_filters: int = 64,
        sinc_kernel_size: int = 251,
        sinc_min_low_hz: float = 50.0,
        sinc_min_band_hz: float = 50.0,
        conv_channels: Sequence[int] = (64, 128, 128, 256, 256, 512, 512),
        conv_kernel_sizes: Sequence[int] = (20, 11, 11, 11, 11, 11, 11),
        conv_strides: Sequence[int] = (10, 2, 1, 2, 1, 2, 2),
        emb_dim: int = 100,
        rnn_type: str = "none",
        rnn_hidden_dim: int = 512,
        rnn_layers: int = 1,
        rnn_bidirectional: bool = False,
        dense_skips: bool = False,
    ):
        super().__init__()
        if not (len(conv_channels) == len(conv_kernel_sizes) == len(conv_strides)):
            raise ValueError(
                f"conv_channels, conv_kernel_sizes and conv_strides must have the same length, got "
                f"{len(conv_channels)}, {len(conv_kernel_sizes)}, {len(conv_strides)}")
        self.sample_rate = sample_rate
        self.emb_dim = emb_dim
        blocks: List[EncoderBlock] = [EncoderBlock(
            SincConv1d(sinc_filters, sinc_kernel_size, sample_rate, sinc_min_low_hz, sinc_min_band_hz),
            sinc_filters, sinc_kernel_size, 1)]
        in_ch = sinc_filters
        for ch, k, s in zip(conv_channels, conv_kernel_sizes, conv_strides):
            blocks.append(EncoderBlock(nn.Conv1d(in_ch, ch, k, stride=s, bias=False), ch, k, s))
            in_ch = ch
        self.blocks = nn.ModuleList(blocks)
        # cum_strides[i]: total stride at the output of block i (block 0 = SincNet, stride 1).
        self.cum_strides = [math.prod(conv_strides[:i]) for i in range(len(conv_strides) + 1)]
        self.hop = self.cum_strides[-1]

        self.rnn_type = rnn_type
        if rnn_type == "none":
            self.rnn = None
            proj_in = in_ch
        elif rnn_type in ("lstm", "gru"):
            rnn_cls = nn.LSTM if rnn_type == "lstm" else nn.GRU
            self.rnn = rnn_cls(in_ch, rnn_hidden_dim, num_layers=rnn_layers, batch_first=True,
                               bidirectional=rnn_bidirectional)
            proj_in = rnn_hidden_dim * (2 if rnn_bidirectional else 1)
        else:
            raise ValueError(f"rnn_type must be one of none, lstm, gru; got {rnn_type!r}")
        self.proj = nn.Conv1d(proj_in, emb_dim, 1)
        # Dense skips from every conv block (not the SincNet block) into the output.
        self.skips = nn.ModuleList(
            nn.Conv1d(ch, emb_dim, 1, bias=False) for ch in conv_channels) if dense_skips else None
        self.out_norm = nn.BatchNorm1d(emb_dim, affine=False)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for utterances of ``sample_lengths`` samples."""
        return torch.div(sample_lengths, self.hop, rounding_mode="floor")

    def forward(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``wav`` ``(B, T)``, ``padding_mask`` ``(B, T)`` (True = padded) ->
        ``(emb (B, emb_dim, N), frame_padding_mask (B, N) or None)`` with ``N = T // hop``."""
        emb, frame_mask, _ = self.forward_with_skips(wav, padding_mask)
        return emb, frame_mask

    def forward_with_skips(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        """As :meth:`forward`, plus PASE+'s dense-skip terms: one ``(B, emb_dim, N)`` per conv block after
        the SincNet block, pooled to the output frame rate (an empty list without dense skips)."""
        if wav.dim() != 2:
            raise ValueError(f"expected a (B, T) waveform batch, got shape {tuple(wav.shape)}")
        lengths = None
        if padding_mask is not None:
            lengths = (~padding_mask).sum(1)
            wav = wav.masked_fill(padding_mask, 0.0)
        x = wav.unsqueeze(1)
        skip_sum = None
        skip_terms: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            cum = self.cum_strides[i]
            if lengths is not None:
                x = _mask_steps(x, torch.div(lengths, cum, rounding_mode="floor"))
            if self.skips is not None and i > 0:
                ratio = self.hop // cum
                s = self.skips[i - 1](x)
                s = F.avg_pool1d(s, ratio) if ratio > 1 else s
                skip_terms.append(s)
                skip_sum = s if skip_sum is None else skip_sum + s
        n_frames = wav.size(1) // self.hop
        frame_lengths = None if lengths is None else self.frame_lengths(lengths)
        if self.rnn is not None:
            h = x.transpose(1, 2)
            if frame_lengths is not None:
                packed = nn.utils.rnn.pack_padded_sequence(
                    h, frame_lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
                h, _ = self.rnn(packed)
                h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=n_frames)
            else:
                h, _ = self.rnn(h)
            x = h.transpose(1, 2)
        emb = self.proj(x)
        if skip_sum is not None:
            emb = emb + skip_sum
        emb = self.out_norm(emb)
        frame_mask = None
        if frame_lengths is not None:
            emb = _mask_steps(emb, frame_lengths)
            frame_mask = torch.arange(n_frames, device=emb.device).unsqueeze(0) >= frame_lengths.unsqueeze(1)
        return emb, frame_mask, skip_terms
