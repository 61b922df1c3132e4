"""LPS worker: regress the log power spectrum of each frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import PaseBatch, RegressorConfig, RegressorWorker, frame_signal


@dataclass
class LPSConfig(RegressorConfig):
    n_fft: int = 2048  # FFT size: the target has n_fft // 2 + 1 bins (PASE: 2048 -> 1025)
    win_length: int = 400  # analysis window in samples (25 ms at 16 kHz; "long" variants: 3200)


def log_power_spectrum(wav: torch.Tensor, num_frames: int, hop: int, win_length: int, n_fft: int) -> torch.Tensor:
    """``(B, T)`` -> ``(B, num_frames, n_fft // 2 + 1)`` log power spectrum (Hann window)."""
    if n_fft < win_length:
        raise ValueError(f"n_fft ({n_fft}) must be >= win_length ({win_length})")
    frames = frame_signal(wav.float(), num_frames, hop, win_length)
    window = torch.hann_window(win_length, periodic=False, device=wav.device)
    spec = torch.fft.rfft(frames * window, n=n_fft)
    return torch.log(spec.real ** 2 + spec.imag ** 2 + 1e-10)


@register_worker("lps", dataclass=LPSConfig)
class LPSWorker(RegressorWorker):
    """Log power spectrum, ``n_fft // 2 + 1`` dims per frame, MSE on z-normalised targets."""

    def __init__(self, name: str, cfg: LPSConfig, emb_dim: int, sample_rate: int, hop: int):
        if cfg.n_fft < cfg.win_length:
            raise ValueError(f"worker {name}: n_fft ({cfg.n_fft}) must be >= win_length ({cfg.win_length})")
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=cfg.n_fft // 2 + 1)

    @torch.no_grad()
    def compute_raw_target(self, batch: PaseBatch) -> torch.Tensor:
        return log_power_spectrum(batch.wav, batch.num_frames, self.hop, self.cfg.win_length, self.cfg.n_fft)
