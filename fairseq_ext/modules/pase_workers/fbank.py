"""Filterbank worker: regress log mel filterbank energies (kaldi-style analysis, own torch code)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import PaseBatch, RegressorConfig, RegressorWorker, frame_signal


@dataclass
class FbankConfig(RegressorConfig):
    n_mels: int = 40  # mel bands
    win_length: int = 400  # analysis window in samples (25 ms at 16 kHz)
    low_freq: float = 20.0  # lowest mel band edge (Hz)
    high_freq: float = 0.0  # highest mel band edge (Hz); <= 0 means Nyquist + high_freq


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float,
                   device=None) -> torch.Tensor:
    """Triangular filters, evenly spaced and triangular on the mel scale: ``(n_fft // 2 + 1, n_mels)``."""
    nyquist = sample_rate / 2.0
    if high_freq <= 0:
        high_freq = nyquist + high_freq
    if not 0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel filterbank needs 0 <= low_freq < high_freq <= {nyquist}, "
                         f"got {low_freq}, {high_freq}")
    lo, hi = _mel(torch.tensor(low_freq, dtype=torch.float64)), _mel(torch.tensor(high_freq, dtype=torch.float64))
    edges = lo + (hi - lo) * torch.arange(n_mels + 2, dtype=torch.float64) / (n_mels + 1)
    bins = _mel(torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft).unsqueeze(1)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float().to(device)


def povey_window(length: int, device=None) -> torch.Tensor:
    n = torch.arange(length, dtype=torch.float64, device=device)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1))).pow(0.85).float()


def log_mel_energies(wav: torch.Tensor, num_frames: int, hop: int, win_length: int, n_mels: int,
                     sample_rate: int, low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """``(B, T)`` -> ``(B, num_frames, n_mels)`` log mel energies.

    Kaldi's fbank recipe: DC removal, pre-emphasis 0.97, Povey window, power spectrum on the next
    power of two, triangular mel filters, log with a floor.
    """
    frames = frame_signal(wav.float(), num_frames, hop, win_length)
    frames = frames - frames.mean(-1, keepdim=True)
    frames = torch.cat([frames[..., :1] * (1 - 0.97), frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1)
    n_fft = 1 << (win_length - 1).bit_length()
    spec = torch.fft.rfft(frames * povey_window(win_length, wav.device), n=n_fft)
    power = spec.real ** 2 + spec.imag ** 2
    fb = mel_filterbank(n_mels, n_fft, sample_rate, low_freq, high_freq, wav.device)
    return torch.log(torch.clamp(power @ fb, min=torch.finfo(torch.float32).eps))


@register_worker("fbank", dataclass=FbankConfig)
class FbankWorker(RegressorWorker):
    """Log mel filterbank energies, ``n_mels`` dims per frame, MSE on z-normalised targets."""

    def __init__(self, name: str, cfg: FbankConfig, emb_dim: int, sample_rate: int, hop: int):
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=cfg.n_mels)

    @torch.no_grad()
    def compute_raw_target(self, batch: PaseBatch) -> torch.Tensor:
        c = self.cfg
        return log_mel_energies(batch.wav, batch.num_frames, self.hop, c.win_length, c.n_mels,
                                self.sample_rate, c.low_freq, c.high_freq)
