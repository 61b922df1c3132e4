"""Speaker-conditioned masked prediction (as in ContentVec): HuBERT's prediction head gets the
speaker for free, so the encoder need not carry it.

k-means targets of speaker-dependent features (MFCC at iteration 1) are themselves partly
speaker-dependent: an encoder that drops the speaker cannot tell those label distinctions apart,
and masked prediction then fights the speaker adversary. Adding a learned embedding of the true
speaker to the encoder output *in front of HuBERT's ``final_proj`` only* lets the head make the
speaker-dependent distinctions from the embedding. ``extract_features`` (feature dumping, probes,
fine-tuning) never sees the embedding.

fairseq's ``HubertModel.forward`` calls ``final_proj`` on ``x[masked]`` and then on ``x[unmasked]``
(each skipped with ``skip_masked``/``skip_nomask``). :meth:`SpeakerConditioning.start` takes the
batch's speaker ids, :meth:`SpeakerConditioning.plan` records, for
each of those calls in order, the utterance of every selected frame; a forward pre-hook on
``final_proj`` then adds that utterance's speaker embedding to each row.
"""

from typing import List, Optional

import torch
from torch import nn


class SpeakerConditioning(nn.Module):
    """Learned speaker embeddings added to the rows fed to a projection, through a pre-hook.

    Args:
        n_speakers: number of speaker ids.
        dim: encoder output size D (the input size of ``final_proj``).
    """

    def __init__(self, n_speakers: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_speakers, dim)
        nn.init.zeros_(self.embedding.weight)  # starts as plain HuBERT
        self._speakers: Optional[torch.Tensor] = None
        self._owners: List[torch.Tensor] = []

    def start(self, spk_id: Optional[torch.Tensor]) -> None:
        """Begin a forward pass with speaker ids ``spk_id`` (B,), or None (no conditioning)."""
        self._speakers, self._owners = spk_id, []

    def plan(self, padding_mask: Optional[torch.Tensor], mask: torch.Tensor, skip_masked: bool,
             skip_nomask: bool) -> None:
        """Prepare this forward's projections. padding_mask, mask: (B, T) bool (True = padding /
        masked)."""
        self._owners = []
        if self._speakers is None:
            return
        valid = torch.ones_like(mask) if padding_mask is None else ~padding_mask
        for selected, skip in ((valid & mask, skip_masked), (valid & ~mask, skip_nomask)):
            if not skip:
                self._owners.append(selected.nonzero()[:, 0])

    def clear(self) -> None:
        self._speakers, self._owners = None, []

    def hook(self, module: nn.Module, args):
        """Forward pre-hook of ``final_proj``: rows (N, D) -> rows + embedding(speaker of each row)."""
        if self._speakers is None or not self._owners:
            return None
        owner = self._owners.pop(0)
        (x,) = args
        if owner.numel() != x.size(0):
            raise RuntimeError(f"speaker conditioning expected {owner.numel()} rows, got {x.size(0)}")
        return (x + self.embedding(self._speakers[owner]).to(x.dtype),)

    def extra_repr(self) -> str:
        return f"speakers={self.embedding.num_embeddings}, dim={self.embedding.embedding_dim}"
