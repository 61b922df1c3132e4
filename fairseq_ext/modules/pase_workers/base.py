"""Base classes of PASE workers: the batch they see, regressors, classifiers, framing helpers.

A worker is a small head on top of the encoder output plus its own target ("labeller"),
computed on the fly from the input chunk on the model's device:

* :class:`RegressorWorker` predicts a per-frame target ``(B, N, D)`` (LPS, MFCC, ...). Targets
  are z-normalised with statistics from ``scripts/pase_stats.py`` (kept in the worker's buffers
  and so in every checkpoint) or, without a statistics file, with running statistics over the
  first training batches (of all ranks together under torch.distributed). ``context > 0`` stacks ``2 * context + 1`` neighbouring target frames
  per output frame (PASE+ uses 3, i.e. 7 frames).
* :class:`ClassifierWorker` decides whether two embeddings come from the same utterance
  (LIM, GIM), with BCE on logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    """Options every worker accepts (worker files subclass this to add their own)."""

    weight: float = 1.0  # weight of this worker's loss in the total loss
    type: Optional[str] = None  # registered worker to build; default: the config entry's name
    hidden_dim: int = 256  # hidden units of the 1-hidden-layer MLP head


@dataclass
class RegressorConfig(WorkerConfig):
    context: int = 0  # predict 2 * context + 1 stacked target frames per frame (PASE+: 3)


@dataclass
class PaseBatch:
    """Everything a worker may look at for one batch.

    Attributes:
        wav: anchor chunks ``(B, T)``, zero past each utterance's end.
        wav_lengths: valid samples per chunk ``(B,)``.
        emb: anchor embeddings ``(B, C, N)``.
        frame_lengths: valid frames per chunk ``(B,)``.
        hop: samples per frame.
        sample_rate: Hz.
        pos_emb, neg_emb: embeddings ``(B, C, N)`` of another chunk of the same utterance and of a
            chunk of another utterance (None unless a classifier worker runs).
        pos_frame_lengths, neg_frame_lengths: their valid frames ``(B,)``.
    """

    wav: torch.Tensor
    wav_lengths: torch.Tensor
    emb: torch.Tensor
    frame_lengths: torch.Tensor
    hop: int
    sample_rate: int
    pos_emb: Optional[torch.Tensor] = None
    neg_emb: Optional[torch.Tensor] = None
    pos_frame_lengths: Optional[torch.Tensor] = None
    neg_frame_lengths: Optional[torch.Tensor] = None

    @property
    def num_frames(self) -> int:
        return self.emb.size(2)

    def frame_mask(self, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N)`` bool, True on valid frames."""
        lengths = self.frame_lengths if lengths is None else lengths
        return torch.arange(self.num_frames, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def frame_signal(wav: torch.Tensor, num_frames: int, hop: int, win: int) -> torch.Tensor:
    """Cut ``wav`` ``(B, T)`` into ``(B, num_frames, win)`` windows centred on the encoder frames.

    Encoder frame ``i`` covers samples ``[hop * i, hop * (i + 1))``; its window is centred at
    ``hop * i + hop / 2``. Samples outside the chunk are zeros.
    """
    left = win // 2 - hop // 2
    if left < 0:
        raise ValueError(f"analysis window ({win}) must be at least one hop ({hop}) long")
    padded = F.pad(wav, (left, win))
    return padded.unfold(1, win, hop)[:, :num_frames]


def stack_context(x: torch.Tensor, context: int) -> torch.Tensor:
    """``(B, N, D)`` -> ``(B, N, (2 * context + 1) * D)``: frames ``t - context .. t + context``."""
    if context == 0:
        return x
    y = F.pad(x.transpose(1, 2), (context, context), mode="replicate")  # (B, D, N + 2c)
    y = y.unfold(2, 2 * context + 1, 1)  # (B, D, N, 2c + 1)
    return y.permute(0, 2, 3, 1).reshape(x.size(0), x.size(1), -1)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Per-frame 1-hidden-layer MLP as 1x1 convolutions: ``(B, in, N) -> (B, out, N)``."""
    return nn.Sequential(nn.Conv1d(in_dim, hidden_dim, 1), nn.PReLU(hidden_dim), nn.Conv1d(hidden_dim, out_dim, 1))


class PaseWorker(nn.Module):
    """Base class. Subclasses set ``kind`` and implement the three methods below."""

    kind: str = "regressor"  # or "classifier" (classifiers need positive / negative chunks)
    registry_name: str = ""  # set by register_worker

    def __init__(self, name: str, cfg: WorkerConfig, emb_dim: int, sample_rate: int, hop: int):
        super().__init__()
        self.name = name
        self.cfg = cfg
        self.emb_dim = emb_dim
        self.sample_rate = sample_rate
        self.hop = hop

    @torch.no_grad()
    def compute_target(self, batch: PaseBatch) -> torch.Tensor:
        """The worker's target for this batch (no gradient)."""
        raise NotImplementedError

    def forward(self, batch: PaseBatch) -> torch.Tensor:
        """The worker's prediction for this batch."""
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, target: torch.Tensor, batch: PaseBatch) -> torch.Tensor:
        """Scalar loss, a mean over the batch's valid elements."""
        raise NotImplementedError

    def run(self, batch: PaseBatch) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, extra logging sums)`` for one batch."""
        target = self.compute_target(batch)
        pred = self(batch)
        return self.loss(pred, target, batch), {}

    def target_signature(self) -> Dict[str, Any]:
        """The options that change the target (recorded with normalisation statistics)."""
        skip = {f.name for f in fields(WorkerConfig)} | {"context"}
        sig = {f.name: getattr(self.cfg, f.name) for f in fields(self.cfg) if f.name not in skip}
        sig["type"] = self.registry_name
        return sig


class RegressorWorker(PaseWorker):
    """Per-frame regression of a ``target_dim``-dimensional target with an MLP head and MSE.

    Subclasses implement :meth:`compute_raw_target` ``(B, N, target_dim)``.
    """

    kind = "regressor"
    normalise_target = True

    def __init__(self, name: str, cfg: RegressorConfig, emb_dim: int, sample_rate: int, hop: int,
                 target_dim: int):
        super().__init__(name, cfg, emb_dim, sample_rate, hop)
        self.target_dim = target_dim
        self.context = int(getattr(cfg, "context", 0))
        if self.context < 0:
            raise ValueError(f"worker {name}: context must be >= 0, got {self.context}")
        self.head = self.build_head()
        if self.normalise_target:
            self.register_buffer("target_mean", torch.zeros(target_dim))
            self.register_buffer("target_std", torch.ones(target_dim))
            # int64 buffers survive model.half(): frames accumulated, and where the statistics
            # come from (0: not set yet, 1: statistics file, 2: running statistics).
            self.register_buffer("stats_frames", torch.zeros((), dtype=torch.long))
            self.register_buffer("stats_source", torch.zeros((), dtype=torch.long))
            self.register_buffer("stats_batches", torch.zeros((), dtype=torch.long))
        self.running_stats_batches = 0  # set by the model when running statistics are used

    def build_head(self) -> nn.Module:
        return mlp_head(self.emb_dim, self.cfg.hidden_dim, self.target_dim * (2 * self.context + 1))

    @torch.no_grad()
    def compute_raw_target(self, batch: PaseBatch) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ normalisation
    def set_target_stats(self, mean: torch.Tensor, std: torch.Tensor, frames: int) -> None:
        """Fix the normalisation statistics (from a statistics file)."""
        self.target_mean.copy_(mean.to(self.target_mean))
        self.target_std.copy_(std.clamp(min=1e-5).to(self.target_std))
        self.stats_frames.fill_(int(frames))
        self.stats_source.fill_(1)

    @torch.no_grad()
    def _update_running_stats(self, target: torch.Tensor, mask: torch.Tensor) -> None:
        """Merge the valid frames of ``target`` ``(B, N, D)`` (``mask`` ``(B, N)``) into the running statistics.

        Under ``torch.distributed`` (initialised, world size > 1) the frame count and the sums are
        all-reduced first, so every rank merges the frames of all ranks and the statistics stay
        identical on every rank (fairseq's DDP does not synchronise buffers). Every rank must then
        call this for the same batches, which holds: the update runs for the first
        ``running_stats_batches`` training batches of every rank.
        """
        mean_a = self.target_mean.double()
        x = target[mask].double() - mean_a  # (M, D), centred on the current mean for precision
        sums = torch.cat([x.new_full((1,), float(x.size(0))), x.sum(0), (x * x).sum(0)])  # (1 + 2D,)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        m = int(round(float(sums[0])))
        if m == 0:
            return
        d = x.size(1)
        shift = sums[1:1 + d] / m  # batch mean minus mean_a
        var_b = (sums[1 + d:] / m - shift ** 2).clamp(min=0.0)
        n = int(self.stats_frames)
        var_a = self.target_std.double() ** 2 if n > 0 else torch.zeros_like(var_b)
        tot = n + m
        mean = mean_a + shift * (m / tot)
        var = (var_a * n + var_b * m + shift ** 2 * (n * m / tot)) / tot
        self.target_mean.copy_(mean.to(self.target_mean))
        self.target_std.copy_(var.sqrt().clamp(min=1e-5).to(self.target_std))
        self.stats_frames.fill_(tot)
        self.stats_source.fill_(2)
        self.stats_batches.add_(1)

    @torch.no_grad()
    def compute_target(self, batch: PaseBatch) -> torch.Tensor:
        """Normalised (and context-stacked) target ``(B, N, target_dim * (2 * context + 1))``."""
        raw = self.compute_raw_target(batch).float()
        if self.normalise_target:
            if (self.training and int(self.stats_source) != 1
                    and int(self.stats_batches) < self.running_stats_batches):
                self._update_running_stats(raw, batch.frame_mask())
            raw = (raw - self.target_mean.float()) / self.target_std.float()
        return stack_context(raw, self.context)

    # ------------------------------------------------------------------ prediction and loss
    def forward(self, batch: PaseBatch) -> torch.Tensor:
        """``(B, N, target_dim * (2 * context + 1))``."""
        return self.head(batch.emb).transpose(1, 2)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, batch: PaseBatch) -> torch.Tensor:
        """MSE over valid frames."""
        mask = batch.frame_mask().unsqueeze(-1).to(pred.dtype)
        err = (pred.float() - target.float()) ** 2 * mask
        return err.sum() / (mask.sum() * pred.size(-1)).clamp(min=1.0)


class ClassifierWorker(PaseWorker):
    """Binary classification of (anchor, positive) pairs as 1 and (anchor, negative) pairs as 0."""

    kind = "classifier"

    def loss(self, pred: torch.Tensor, target: torch.Tensor, batch: PaseBatch) -> torch.Tensor:
        """BCE with logits; ``pred`` and ``target`` have the same shape, NaN targets are ignored."""
        valid = ~torch.isnan(target)
        return F.binary_cross_entropy_with_logits(pred.float()[valid], target[valid])

    def run(self, batch: PaseBatch) -> Tuple[torch.Tensor, Dict[str, float]]:
        if batch.pos_emb is None or batch.neg_emb is None:
            raise ValueError(
                f"worker {self.name!r} needs positive and negative chunks: set task.contrastive_chunks=true")
        target = self.compute_target(batch)
        pred = self(batch)
        valid = ~torch.isnan(target)
        with torch.no_grad():
            correct = ((pred.float()[valid] > 0) == (target[valid] > 0.5)).sum()
        return self.loss(pred, target, batch), {"correct": float(correct), "count": float(valid.sum())}
