"""LIM worker (local info max): do two frames come from the same utterance?"""

from __future__ import annotations

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import ClassifierWorker, PaseBatch, WorkerConfig, mlp_head


@register_worker("lim", dataclass=WorkerConfig)
class LIMWorker(ClassifierWorker):
    """Frame ``t`` of the anchor, paired with frame ``t`` of another chunk of the same utterance
    (label 1) and with frame ``t`` of a chunk of another utterance (label 0); a per-frame MLP on
    the concatenated pair gives a logit. Prediction and target: ``(2B, N)``; frames invalid in
    either chunk have a NaN target and are ignored."""

    def __init__(self, name: str, cfg: WorkerConfig, emb_dim: int, sample_rate: int, hop: int):
        super().__init__(name, cfg, emb_dim, sample_rate, hop)
        self.head = mlp_head(2 * emb_dim, cfg.hidden_dim, 1)

    @torch.no_grad()
    def compute_target(self, batch: PaseBatch) -> torch.Tensor:
        anchor = batch.frame_mask()
        pos = anchor & batch.frame_mask(batch.pos_frame_lengths)
        neg = anchor & batch.frame_mask(batch.neg_frame_lengths)
        target = torch.cat([pos.float(), torch.zeros_like(neg, dtype=torch.float)], 0)
        return target.masked_fill(~torch.cat([pos, neg], 0), float("nan"))

    def forward(self, batch: PaseBatch) -> torch.Tensor:
        pairs = torch.cat([torch.cat([batch.emb, batch.pos_emb], 1), torch.cat([batch.emb, batch.neg_emb], 1)], 0)
        return self.head(pairs).squeeze(1)
