"""SincNet's learnable band-pass convolution (Ravanelli & Bengio, 2018), as used by PASE.

Each output channel is a windowed ideal band-pass filter whose only learnable parameters are
its two cut-off frequencies. The parametrisation keeps every filter a valid band-pass after any
optimiser step: ``min_low_hz <= low < high <= sample_rate / 2`` and ``high - low >= min_band_hz``.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10 ** (mel / 2595.0) - 1.0)


class SincConv1d(nn.Module):
    """Band-pass filter bank with learnable cut-offs (no padding: the caller pads).

    Args:
        out_channels: number of filters.
        kernel_size: filter length in samples (odd).
        sample_rate: sample rate of the input in Hz.
        min_low_hz: smallest allowed lower cut-off.
        min_band_hz: smallest allowed bandwidth.
        stride: convolution stride.
    Shapes:
        input ``(B, T)`` or ``(B, 1, T)``; output ``(B, out_channels, (T - kernel_size) // stride + 1)``.
    """

    def __init__(self, out_channels: int = 64, kernel_size: int = 251, sample_rate: int = 16000,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0, stride: int = 1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SincConv1d kernel_size must be odd, got {kernel_size}")
        nyquist = sample_rate / 2.0
        if min_low_hz + min_band_hz >= nyquist:
            raise ValueError(
                f"min_low_hz + min_band_hz ({min_low_hz} + {min_band_hz}) must be below the "
                f"Nyquist frequency {nyquist} Hz")
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low_hz = float(min_low_hz)
        self.min_band_hz = float(min_band_hz)
        self.stride = stride

        # Initial cut-offs: contiguous bands, equally spaced on the mel scale.
        edges = _mel_to_hz(torch.linspace(_hz_to_mel(30.0), _hz_to_mel(nyquist - min_low_hz - min_band_hz),
                                          out_channels + 1))
        self.low_hz_ = nn.Parameter((edges[:-1] - self.min_low_hz).unsqueeze(1))
        self.band_hz_ = nn.Parameter(torch.diff(edges).unsqueeze(1))

    def cutoffs_hz(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Current ``(low, high)`` cut-offs in Hz, each of shape ``(out_channels,)``."""
        nyquist = self.sample_rate / 2.0
        low = torch.clamp(self.min_low_hz + self.low_hz_.abs(), max=nyquist - self.min_band_hz)
        high = torch.clamp(low + self.min_band_hz + self.band_hz_.abs(), max=nyquist)
        return low.squeeze(1), high.squeeze(1)

    def filters(self) -> torch.Tensor:
        """The filter bank, shape ``(out_channels, 1, kernel_size)``, centre tap normalised to 1."""
        low, high = self.cutoffs_hz()
        low, high = low.float().unsqueeze(1), high.float().unsqueeze(1)
        # Built in float32 on every call (not buffers, which model.half() would round).
        half = (self.kernel_size - 1) // 2
        n = torch.arange(1, half + 1, dtype=torch.float32, device=low.device)
        t = (n / self.sample_rate).unsqueeze(0)  # (1, half): time of the right half, centre excluded
        window = 0.54 + 0.46 * torch.cos(2 * math.pi * n / (self.kernel_size - 1))  # Hamming, right half
        # Difference of two ideal low-passes: (sin(2 pi f2 t) - sin(2 pi f1 t)) / (pi t).
        right = (torch.sin(2 * math.pi * high * t) - torch.sin(2 * math.pi * low * t)) / (math.pi * t)
        right = right * window.unsqueeze(0)
        centre = 2.0 * (high - low)
        filt = torch.cat([right.flip(1), centre, right], dim=1) / centre
        return filt.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, T)`` or ``(B, 1, T)`` -> ``(B, out_channels, T_out)``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return F.conv1d(x, self.filters().to(x.dtype), stride=self.stride)

    def extra_repr(self) -> str:
        return (f"{self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"sample_rate={self.sample_rate}, min_low_hz={self.min_low_hz}, "
                f"min_band_hz={self.min_band_hz}")
