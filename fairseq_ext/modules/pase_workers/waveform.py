"""Waveform worker: reconstruct the input samples from the embeddings (L1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn as nn

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import PaseBatch, RegressorConfig, RegressorWorker


@dataclass
class WaveformConfig(RegressorConfig):
    strides: List[int] = field(default_factory=lambda: [4, 4, 10])  # upsampling factors; product = hop
    channels: List[int] = field(default_factory=lambda: [256, 128, 64])  # channels after each upsampling


@register_worker("waveform", dataclass=WaveformConfig)
class WaveformWorker(RegressorWorker):
    """Transposed-convolution decoder ``(B, C, N) -> (B, N * hop)``; L1 to the raw (unnormalised) samples."""

    normalise_target = False

    def __init__(self, name: str, cfg: WaveformConfig, emb_dim: int, sample_rate: int, hop: int):
        if math.prod(cfg.strides) != hop:
            raise ValueError(f"worker {name}: the product of strides {list(cfg.strides)} must equal the "
                             f"encoder hop {hop}")
        if len(cfg.strides) != len(cfg.channels):
            raise ValueError(f"worker {name}: strides and channels must have the same length")
        if cfg.context:
            raise ValueError(f"worker {name}: context is not supported by the waveform worker")
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=1)

    def build_head(self) -> nn.Module:
        layers: List[nn.Module] = []
        in_ch = self.emb_dim
        for s, ch in zip(self.cfg.strides, self.cfg.channels):
            # kernel 2s, padding s/2 (s even) or (s+1)/2 with output_padding: exact x s upsampling
            pad, out_pad = (s // 2, 0) if s % 2 == 0 else ((s + 1) // 2, 1)
            layers += [nn.ConvTranspose1d(in_ch, ch, 2 * s, stride=s, padding=pad, output_padding=out_pad),
                       nn.BatchNorm1d(ch), nn.PReLU(ch)]
            in_ch = ch
        layers.append(nn.Conv1d(in_ch, 1, 1))
        return nn.Sequential(*layers)

    @torch.no_grad()
    def compute_raw_target(self, batch: PaseBatch) -> torch.Tensor:
        """The anchor samples covered by the frames, ``(B, N * hop)``."""
        return batch.wav[:, : batch.num_frames * self.hop].float()

    def forward(self, batch: PaseBatch) -> torch.Tensor:
        """``(B, N * hop)``."""
        return self.head(batch.emb).squeeze(1)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, batch: PaseBatch) -> torch.Tensor:
        """L1 over valid samples."""
        steps = torch.arange(pred.size(1), device=pred.device)
        mask = (steps.unsqueeze(0) < (batch.frame_lengths * self.hop).unsqueeze(1)).to(pred.dtype)
        return ((pred.float() - target).abs() * mask).sum() / mask.sum().clamp(min=1.0)
