"""Trainable log-Mel spectrogram front-end (STFT and Mel bases as parameters), no torchaudio.

Follows "Understanding Audio Features via Trainable Basis Functions" (nnAudio, arXiv 2204.11437):
the STFT is a strided ``conv1d`` whose kernels are initialised to windowed DFT bases (cosine and
sine rows), the Mel filterbank is a ``(n_freq, n_mels)`` matrix initialised to standard triangular
filters (or randomly), and either basis can be trained:

====== ============ ============
setting STFT basis   Mel basis
====== ============ ============
A       fixed        fixed
B       fixed        trainable
C       trainable    fixed
D       trainable    trainable
====== ============ ============

Output: ``log(mel_power + 1e-10)`` per frame. The Mel basis is kept in ``[0, 1]``: it is clamped
in place after every optimizer step (:meth:`LogMelFrontend.clamp_mel_`, called by the
``speaker_classification`` task and by the model's ``set_num_updates``) and the forward pass
uses a clamped copy, so a basis that was edited from outside can never go negative.

Framing uses zero "center" padding of ``n_fft // 2`` samples on both sides, giving
``n_samples // hop + 1`` frames. Because the padding is zeros (not reflection), an utterance's
frames are the same whether it is processed alone or zero-padded inside a batch.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MEL_INIT_CHOICES = ("htk", "slaney", "random")
SETTINGS = {"A": (False, False), "B": (False, True), "C": (True, False), "D": (True, True)}


# --------------------------------------------------------------------------- Mel scale


def hz_to_mel(freq: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    """Hz -> Mel. ``htk``: ``2595 log10(1 + f / 700)``; ``slaney``: linear below 1 kHz, log above."""
    f = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale == "slaney":
        f_sp = 200.0 / 3  # Hz per Mel in the linear part
        min_log_hz, min_log_mel = 1000.0, 1000.0 / f_sp
        logstep = math.log(6.4) / 27.0
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
                        f / f_sp)
    raise ValueError(f"unknown Mel scale {scale!r}; use 'htk' or 'slaney'")


def mel_to_hz(mel: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    """Mel -> Hz, the inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale == "slaney":
        f_sp = 200.0 / 3
        min_log_hz, min_log_mel = 1000.0, 1000.0 / f_sp
        logstep = math.log(6.4) / 27.0
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * f_sp)
    raise ValueError(f"unknown Mel scale {scale!r}; use 'htk' or 'slaney'")


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: Optional[float] = None,
    scale: str = "htk", norm: Optional[str] = None,
) -> np.ndarray:
    """Triangular Mel filters, centres equally spaced on the Mel scale.

    Args:
        sample_rate: Hz.
        n_fft: FFT size; the filters cover its ``n_fft // 2 + 1`` bins.
        n_mels: number of filters.
        f_min, f_max: frequency range in Hz (``f_max`` defaults to Nyquist).
        scale: ``"htk"`` or ``"slaney"`` Mel formula.
        norm: None (peak 1) or ``"slaney"`` (each filter scaled to unit area, ``2 / bandwidth``).
    Returns:
        ``(n_fft // 2 + 1, n_mels)`` float32 matrix (power spectrum @ matrix = Mel power).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got f_min={f_min}, f_max={f_max}")
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2), scale)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1)
    rising = (bins[None, :] - lo) / (mid - lo)
    falling = (hi - bins[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(rising, falling))  # (M, F)
    if norm == "slaney":
        fb *= (2.0 / (hi - lo))
    elif norm is not None:
        raise ValueError(f"unknown Mel norm {norm!r}; use None or 'slaney'")
    empty = np.flatnonzero(fb.max(1) == 0)
    if len(empty):
        logger.warning("Mel filters %s contain no FFT bin (n_fft=%d too small for n_mels=%d)",
                       empty.tolist(), n_fft, n_mels)
    return fb.T.astype(np.float32)


def dft_kernels(n_fft: int, win_length: Optional[int] = None) -> torch.Tensor:
    """Windowed DFT bases as conv1d kernels ``(2 * (n_fft // 2 + 1), 1, n_fft)``: cosines then sines.

    The window is a periodic Hann window of ``win_length`` samples centred in ``n_fft``.
    """
    win_length = n_fft if win_length is None else win_length
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length must be in (0, n_fft={n_fft}], got {win_length}")
    window = torch.zeros(n_fft, dtype=torch.float64)
    start = (n_fft - win_length) // 2
    window[start:start + win_length] = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    phase = 2 * math.pi * k * n / n_fft
    kernels = torch.cat([torch.cos(phase) * window, -torch.sin(phase) * window], dim=0)
    return kernels.unsqueeze(1).float()


# --------------------------------------------------------------------------- module


class LogMelFrontend(nn.Module):
    """Waveform -> log-Mel frames with optionally trainable STFT and Mel bases.

    Args:
        sample_rate, n_fft, hop_length, win_length: framing (defaults 16 kHz, 480, 160, n_fft).
        n_mels: number of Mel bins (10..128 in the paper's sweep).
        f_min, f_max: Mel range in Hz.
        trainable_stft: make the windowed DFT kernels a trained parameter (settings C, D).
        trainable_mel: make the Mel basis a trained parameter (settings B, D).
        mel_init: ``htk`` / ``slaney`` triangular filters, or ``random`` (uniform in [0, 1)).
        mel_norm: None or ``"slaney"`` (unit-area filters).
        maskout_start, maskout_end: Mel bins ``[start, end)`` set to zero in the output
            (``-1`` for none).
        log_floor: added before the log.
    """

    def __init__(
        self, sample_rate: int = 16000, n_fft: int = 480, hop_length: int = 160,
        win_length: Optional[int] = None, n_mels: int = 40, f_min: float = 0.0,
        f_max: Optional[float] = None, trainable_stft: bool = False, trainable_mel: bool = False,
        mel_init: str = "htk", mel_norm: Optional[str] = None, maskout_start: int = -1,
        maskout_end: int = -1, log_floor: float = 1e-10,
    ):
        super().__init__()
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        if mel_init not in MEL_INIT_CHOICES:
            raise ValueError(f"unknown mel_init {mel_init!r}; choose one of {', '.join(MEL_INIT_CHOICES)}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.log_floor = log_floor
        self.stft_kernel = nn.Parameter(dft_kernels(n_fft, win_length), requires_grad=trainable_stft)
        if mel_init == "random":
            basis = torch.rand(n_fft // 2 + 1, n_mels)
        else:
            basis = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_init, mel_norm))
        self.mel_basis = nn.Parameter(basis, requires_grad=trainable_mel)
        band = torch.zeros(n_mels, dtype=torch.bool)
        if maskout_start >= 0 or maskout_end >= 0:
            if not 0 <= maskout_start < maskout_end <= n_mels:
                raise ValueError(f"need 0 <= maskout_start < maskout_end <= n_mels={n_mels}, "
                                 f"got [{maskout_start}, {maskout_end})")
            band[maskout_start:maskout_end] = True
        self.register_buffer("band_mask", band, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.n_mels

    @torch.no_grad()
    def clamp_mel_(self) -> None:
        """Clamp the stored Mel basis to [0, 1] in place (call after each optimizer step)."""
        self.mel_basis.clamp_(0.0, 1.0)

    def output_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Frames produced for ``n_samples`` samples: ``n_samples // hop + 1``."""
        return torch.div(n_samples, self.hop_length, rounding_mode="floor") + 1

    def power_spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` waveform -> ``(B, n_fft // 2 + 1, T)`` power spectrum (float32)."""
        pad = self.n_fft // 2
        x = F.pad(wav.float().unsqueeze(1), (pad, pad))
        spec = F.conv1d(x, self.stft_kernel.float(), stride=self.hop_length)  # (B, 2F, T)
        real, imag = spec.chunk(2, dim=1)
        return real.pow(2) + imag.pow(2)

    def forward(
        self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            wav: ``(B, S)`` waveform, zero-padded.
            padding_mask: ``(B, S)``, True on padded samples, or None.
        Returns:
            ``(feats, frame_padding_mask)``: float32 ``(B, T, n_mels)`` log-Mel frames and
            ``(B, T)`` (True on padded frames) or None.
        """
        if padding_mask is not None:
            wav = wav.masked_fill(padding_mask, 0.0)
        power = self.power_spectrogram(wav)  # (B, F, T)
        mel = torch.matmul(power.transpose(1, 2), self.mel_basis.float().clamp(0.0, 1.0))  # (B, T, M)
        feats = torch.log(mel + self.log_floor)
        if self.band_mask.any():
            feats = feats.masked_fill(self.band_mask, 0.0)
        frame_mask = None
        if padding_mask is not None:
            lengths = self.output_lengths((~padding_mask).sum(1))
            frame_mask = torch.arange(feats.shape[1], device=feats.device)[None, :] >= lengths[:, None]
        return feats, frame_mask


def frontend_setting(trainable_stft: bool, trainable_mel: bool) -> str:
    """The paper's setting letter (A-D) for a pair of trainable flags."""
    return {v: k for k, v in SETTINGS.items()}[(bool(trainable_stft), bool(trainable_mel))]


__all__ = ["LogMelFrontend", "mel_filterbank", "hz_to_mel", "mel_to_hz", "dft_kernels",
           "frontend_setting", "SETTINGS", "MEL_INIT_CHOICES"]
