"""MFCC worker: regress mel-frequency cepstral coefficients (DCT of the log mel energies)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import PaseBatch, RegressorConfig, RegressorWorker
from fairseq_ext.modules.pase_workers.fbank import log_mel_energies


@dataclass
class MFCCConfig(RegressorConfig):
    n_mfcc: int = 20  # cepstral coefficients kept (c0 included)
    n_mels: int = 40  # mel bands before the DCT
    win_length: int = 400  # analysis window in samples (25 ms at 16 kHz)
    low_freq: float = 20.0  # lowest mel band edge (Hz)
    high_freq: float = 0.0  # highest mel band edge (Hz); <= 0 means Nyquist + high_freq
    lifter: float = 0.0  # cepstral liftering coefficient (kaldi's default is 22; 0 = off)


def dct_matrix(n_mels: int, n_mfcc: int, device=None) -> torch.Tensor:
    """Orthonormal DCT-II basis ``(n_mels, n_mfcc)``."""
    n = torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(n_mfcc, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float().to(device)


@register_worker("mfcc", dataclass=MFCCConfig)
class MFCCWorker(RegressorWorker):
    """MFCCs, ``n_mfcc`` dims per frame, MSE on z-normalised targets."""

    def __init__(self, name: str, cfg: MFCCConfig, emb_dim: int, sample_rate: int, hop: int):
        if cfg.n_mfcc > cfg.n_mels:
            raise ValueError(f"worker {name}: n_mfcc ({cfg.n_mfcc}) must be <= n_mels ({cfg.n_mels})")
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=cfg.n_mfcc)

    @torch.no_grad()
    def compute_raw_target(self, batch: PaseBatch) -> torch.Tensor:
        c = self.cfg
        logmel = log_mel_energies(batch.wav, batch.num_frames, self.hop, c.win_length, c.n_mels,
                                  self.sample_rate, c.low_freq, c.high_freq)
        basis = dct_matrix(c.n_mels, c.n_mfcc, logmel.device)
        if c.lifter > 0:
            k = torch.arange(c.n_mfcc, device=logmel.device, dtype=torch.float32)
            basis = basis * (1.0 + 0.5 * c.lifter * torch.sin(math.pi * k / c.lifter)).unsqueeze(0)
        return logmel @ basis
