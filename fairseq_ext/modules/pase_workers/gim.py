"""GIM worker (global info max): do two chunks come from the same utterance?"""

from __future__ import annotations

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import ClassifierWorker, PaseBatch, WorkerConfig, mlp_head


def masked_time_mean(emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B, C, N)`` averaged over each row's first ``lengths`` frames -> ``(B, C)``."""
    steps = torch.arange(emb.size(2), device=emb.device)
    mask = (steps.unsqueeze(0) < lengths.unsqueeze(1)).to(emb.dtype).unsqueeze(1)
    return (emb * mask).sum(2) / mask.sum(2).clamp(min=1.0)


@register_worker("gim", dataclass=WorkerConfig)
class GIMWorker(ClassifierWorker):
    """Time-averaged anchor embedding paired with the time-averaged positive (label 1) and negative
    (label 0) chunks; an MLP on the concatenation gives a logit. Prediction and target: ``(2B,)``."""

    def __init__(self, name: str, cfg: WorkerConfig, emb_dim: int, sample_rate: int, hop: int):
        super().__init__(name, cfg, emb_dim, sample_rate, hop)
        self.head = mlp_head(2 * emb_dim, cfg.hidden_dim, 1)

    @torch.no_grad()
    def compute_target(self, batch: PaseBatch) -> torch.Tensor:
        b = batch.emb.size(0)
        return torch.cat([torch.ones(b), torch.zeros(b)]).to(batch.emb.device)

    def forward(self, batch: PaseBatch) -> torch.Tensor:
        a = masked_time_mean(batch.emb, batch.frame_lengths)
        p = masked_time_mean(batch.pos_emb, batch.pos_frame_lengths)
        n = masked_time_mean(batch.neg_emb, batch.neg_frame_lengths)
        pairs = torch.cat([torch.cat([a, p], 1), torch.cat([a, n], 1)], 0).unsqueeze(2)
        return self.head(pairs).view(-1)
