"""Prosody worker: regress [log F0, voiced flag, log energy, zero-crossing rate] per frame.

F0 comes from a batched autocorrelation estimator in torch (Boersma's normalised
autocorrelation: windowed-signal autocorrelation divided by the window's own autocorrelation,
peak picking in the F0 search range with a small octave cost, parabolic refinement). Log F0 is
linearly interpolated over unvoiced frames; a chunk without any voiced frame gets
``log(f0_min)`` everywhere. Every target stays finite on digital silence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import PaseBatch, RegressorConfig, RegressorWorker, frame_signal


@dataclass
class ProsodyConfig(RegressorConfig):
    f0_min: float = 60.0  # F0 search range (Hz)
    f0_max: float = 300.0
    f0_win_length: int = 800  # F0 analysis window in samples (>= 2 periods of f0_min)
    win_length: int = 400  # energy / zero-crossing window in samples
    voicing_threshold: float = 0.45  # minimum normalised autocorrelation peak for a voiced frame
    silence_threshold: float = 0.05  # frames with peak amplitude below this x the chunk's peak are unvoiced
    octave_cost: float = 0.05  # favours higher F0 candidates per octave (avoids octave-down errors)


@torch.no_grad()
def estimate_f0(wav: torch.Tensor, num_frames: int, hop: int, sample_rate: int, f0_min: float = 60.0,
                f0_max: float = 300.0, win_length: int = 800, voicing_threshold: float = 0.45,
                silence_threshold: float = 0.05, octave_cost: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor]:
    """Frame-level F0 of ``wav`` ``(B, T)``.

    Returns:
        ``(f0 (B, num_frames) in Hz, 0 where unvoiced; voiced (B, num_frames) bool)``.
    """
    wav = wav.float()
    lag_min = max(2, int(math.floor(sample_rate / f0_max)))
    lag_max = int(math.ceil(sample_rate / f0_min))
    if lag_max + 2 >= win_length:
        raise ValueError(f"f0_win_length ({win_length}) must exceed sample_rate / f0_min ({lag_max}) + 2")
    frames = frame_signal(wav, num_frames, hop, win_length)  # (B, N, W)
    frames = frames - frames.mean(-1, keepdim=True)
    window = torch.hann_window(win_length, periodic=False, device=wav.device)
    n_fft = 1 << (2 * win_length - 1).bit_length()

    def autocorr(x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(x, n=n_fft)
        return torch.fft.irfft(spec.real ** 2 + spec.imag ** 2, n=n_fft)[..., : lag_max + 2]

    r = autocorr(frames * window)
    rw = autocorr(window)
    energy = r[..., :1]
    r = (r / energy.clamp(min=1e-12)) / (rw / rw[0])
    lags = torch.arange(lag_min, lag_max + 1, device=wav.device)
    cand = r[..., lag_min: lag_max + 1]
    score = cand + octave_cost * torch.log2(sample_rate / (lags.float() * f0_min))
    best = score.argmax(-1)  # (B, N) index into lags
    peak = cand.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    lag = (best + lag_min).clamp(min=lag_min + 1, max=lag_max)
    # Parabolic refinement around the chosen lag.
    y0 = r.gather(-1, (lag - 1).unsqueeze(-1)).squeeze(-1)
    y1 = r.gather(-1, lag.unsqueeze(-1)).squeeze(-1)
    y2 = r.gather(-1, (lag + 1).unsqueeze(-1)).squeeze(-1)
    denom = y0 - 2 * y1 + y2
    shift = torch.where(denom.abs() > 1e-9, 0.5 * (y0 - y2) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
    f0 = sample_rate / (lag.float() + shift)
    frame_peak = frames.abs().amax(-1)
    chunk_peak = wav.abs().amax(-1, keepdim=True)
    loud = (frame_peak > silence_threshold * chunk_peak) & (chunk_peak > 1e-4) & (energy.squeeze(-1) > 0)
    voiced = (peak > voicing_threshold) & loud & (f0 >= f0_min) & (f0 <= f0_max)
    return torch.where(voiced, f0, torch.zeros_like(f0)), voiced


def interpolate_unvoiced(values: torch.Tensor, voiced: torch.Tensor, fill: float) -> torch.Tensor:
    """Linear interpolation of ``values`` ``(B, N)`` over frames where ``voiced`` is False.

    Leading / trailing unvoiced frames take the nearest voiced value; rows without any voiced
    frame are set to ``fill``.
    """
    b, n = values.shape
    idx = torch.arange(n, device=values.device).expand(b, n)
    prev = torch.where(voiced, idx, torch.full_like(idx, -1)).cummax(1).values
    nxt = torch.where(voiced, idx, torch.full_like(idx, n)).flip(1).cummin(1).values.flip(1)
    has_prev, has_next = prev >= 0, nxt < n
    v_prev = values.gather(1, prev.clamp(min=0))
    v_next = values.gather(1, nxt.clamp(max=n - 1))
    span = (nxt - prev).clamp(min=1).float()
    w = (idx - prev).float() / span
    interp = v_prev + (v_next - v_prev) * w
    out = torch.where(has_prev & has_next, interp, torch.where(has_prev, v_prev, v_next))
    out = torch.where(has_prev | has_next, out, torch.full_like(out, fill))
    return torch.where(voiced, values, out)


@register_worker("prosody", dataclass=ProsodyConfig)
class ProsodyWorker(RegressorWorker):
    """Prosody features ``[log F0 (interpolated), voiced, log energy, zero-crossing rate]`` per frame."""

    def __init__(self, name: str, cfg: ProsodyConfig, emb_dim: int, sample_rate: int, hop: int):
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=4)

    @torch.no_grad()
    def compute_raw_target(self, batch: PaseBatch) -> torch.Tensor:
        c = self.cfg
        n = batch.num_frames
        f0, voiced = estimate_f0(batch.wav, n, self.hop, self.sample_rate, c.f0_min, c.f0_max, c.f0_win_length,
                                 c.voicing_threshold, c.silence_threshold, c.octave_cost)
        lf0 = interpolate_unvoiced(torch.log(f0.clamp(min=c.f0_min)), voiced, math.log(c.f0_min))
        frames = frame_signal(batch.wav.float(), n, self.hop, c.win_length)
        log_energy = torch.log(frames.pow(2).mean(-1) + 1e-10)
        zcr = ((frames[..., 1:] * frames[..., :-1]) < 0).float().mean(-1)
        return torch.stack([lf0, voiced.float(), log_energy, zcr], dim=-1)
