"""A first-in first-out memory of recent speaker-adversary embeddings (frames or utterances) and
their speaker labels.

The dhubert speaker adversary sees only the few utterances of each batch; trained on those alone
it stays near chance, and a near-chance adversary gives the encoder no useful reversed gradient.
Replaying the detached embeddings of the last ``size`` training examples to the classifier at
every update (the encoder gets no gradient from them) lets it keep up with the encoder, the way a
probe trained on many utterances does. The dhubert model owns the memory: its training forward
takes the memory's logits, then pushes the batch's embeddings with the speaker ids it was given.
"""

from typing import Tuple

import torch
from torch import nn


class SpeakerMemory(nn.Module):
    """FIFO of up to ``size`` embeddings ``(C,)`` with integer labels; not saved in checkpoints.

    Args:
        size: capacity in embeddings (> 0).
        dim: embedding size C.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"memory size must be positive, got {size}")
        self.size = size
        self.register_buffer("feats", torch.zeros(size, dim), persistent=False)
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long), persistent=False)
        self.count = 0  # entries filled so far (<= size)
        self.pos = 0  # next slot to overwrite

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def push(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Store ``feats`` ``(B, C)`` (detached) with ``labels`` ``(B,)``, overwriting the oldest."""
        feats, labels = feats.detach()[-self.size:], labels.detach()[-self.size:]
        n = feats.size(0)
        idx = (self.pos + torch.arange(n, device=self.feats.device)) % self.size
        self.feats[idx] = feats.to(self.feats)
        self.labels[idx] = labels.to(self.labels)
        self.pos = (self.pos + n) % self.size
        self.count = min(self.count + n, self.size)

    def get(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(feats (N, C), labels (N,))`` of the N stored entries (in slot order)."""
        return self.feats[:self.count].clone(), self.labels[:self.count].clone()  # later pushes must not alter them

    def clear(self) -> None:
        self.count = self.pos = 0

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.feats.size(1)}, filled={self.count}"
