"""The dhubert speaker adversary's classifier: utterance-level (pooled) or frame-level.

``utterance``: masked pooling of the valid frames -> running standardisation -> MLP, one
prediction per utterance (B of them per batch). ``frame``: every valid frame is standardised and
classified on its own, labelled with its utterance's speaker (B * T of them per batch). A
frame-level adversary has about T times more examples per update, so it keeps up with an encoder
that moves, and its reversed gradient reaches every frame: a mean-pooling probe then finds no
speaker left in the mean either. The logits of an utterance's frames are averaged (in log
probability) for its utterance-level decision.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_ext.modules.pooling import build_pooling
from fairseq_ext.modules.running_standardize import RunningStandardize

SPK_UNITS = ("utterance", "frame")


class SpeakerClassifier(nn.Module):
    """Speaker classifier: ``embed`` (pooling or frame selection, optional running
    standardisation) then ``classify`` (1-hidden-layer MLP).

    Args:
        in_dim: frame feature size C.
        n_speakers: number of classes.
        hidden_dim: MLP hidden size.
        pooling: a name from ``fairseq_ext.modules.pooling.POOLING_CHOICES`` (``unit="utterance"``).
        dropout: dropout before the output layer.
        standardize: standardise the classified vectors with running per-channel statistics.
        unit: ``"utterance"`` (one vector per utterance) or ``"frame"`` (one per valid frame).
    """

    def __init__(self, in_dim: int, n_speakers: int, hidden_dim: int = 256, pooling: str = "mean",
                 dropout: float = 0.1, standardize: bool = False, unit: str = "utterance") -> None:
        super().__init__()
        if unit not in SPK_UNITS:
            raise ValueError(f"unit must be one of {SPK_UNITS}, got {unit!r}")
        self.pool = build_pooling(pooling, in_dim, hidden_dim) if unit == "utterance" else None
        self.out_dim = self.pool.out_dim if self.pool is not None else in_dim
        self.norm = RunningStandardize(self.out_dim) if standardize else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(self.out_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, n_speakers))

    def embed(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: (B, T, C); padding_mask: (B, T) bool, True = padding. Returns ``(vectors (N, D),
        owner)``: for ``utterance`` N = B and owner None; for ``frame`` the N valid frames in
        row-major order and ``owner`` (N,) long, the utterance each frame belongs to."""
        if self.pool is not None:
            return self.norm(self.pool(x, padding_mask)), None
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if padding_mask is None else ~padding_mask
        owner = keep.nonzero()[:, 0]
        return self.norm(x[keep]), owner

    def classify(self, v: torch.Tensor) -> torch.Tensor:
        """v: (N, D) from :meth:`embed`. Returns logits (N, n_speakers)."""
        return self.mlp(v)

    def classify_frozen(self, v: torch.Tensor) -> torch.Tensor:
        """Like :meth:`classify`, but with the MLP's parameters detached: the gradient reaches ``v``
        only (the confusion adversary's encoder-side pass). v: (N, D). Returns (N, n_speakers)."""
        for layer in self.mlp:  # Linear layers with detached weights; ReLU and Dropout as they are
            if isinstance(layer, nn.Linear):
                v = F.linear(v, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
            else:
                v = layer(v)
        return v

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, C); padding_mask: (B, T) bool, True = padding. Returns utterance-level
        logits (B, n_speakers) (for ``frame``: the mean of each utterance's frame log-probabilities)."""
        v, owner = self.embed(x, padding_mask)
        logits = self.classify(v)
        return logits if owner is None else utterance_log_probs(logits, owner, x.size(0))


def utterance_log_probs(frame_logits: torch.Tensor, owner: torch.Tensor, n_utts: int) -> torch.Tensor:
    """Mean frame log-probabilities per utterance: frame_logits (N, K), owner (N,) in [0, n_utts)
    -> (n_utts, K); an utterance without frames gets zeros."""
    logp = torch.log_softmax(frame_logits.float(), dim=-1)
    total = logp.new_zeros(n_utts, logp.size(1)).index_add_(0, owner, logp)
    count = torch.bincount(owner, minlength=n_utts).clamp(min=1).unsqueeze(1).to(logp)
    return total / count
