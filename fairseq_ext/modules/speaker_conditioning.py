"""Speaker-conditioned masked prediction (as in ContentVec): HuBERT's prediction head gets the
speaker for free, so the encoder need not carry it.

k-means targets of speaker-dependent features (MFCC at iteration 1) are themselves partly
speaker-dependent: an encoder that drops the speaker cannot tell those label distinctions apart,
and masked prediction then fights the speaker adversary. Adding a learned embedding of the true
speaker to the encoder output *in front of HuBERT's ``final_proj`` only* lets the head make the
speaker-dependent distinctions from the embedding. ``extract_features`` (feature dumping, probes,
fine-tuning) never sees the embedding.

The model (``dhubert``'s ``compute_logits``) selects the frames it predicts and passes, with their
rows, the speaker of each row: nothing depends on the order in which projections are called.
"""

import torch
from torch import nn


class SpeakerConditioning(nn.Module):
    """Learned speaker embeddings added to encoder rows before the prediction head.

    Args:
        n_speakers: number of speaker ids.
        dim: encoder output size D (the input size of ``final_proj``).
    """

    def __init__(self, n_speakers: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_speakers, dim)
        nn.init.zeros_(self.embedding.weight)  # starts as plain HuBERT

    def forward(self, rows: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """rows: (N, D) selected encoder frames; speakers: (N,) long, the speaker of each row.
        Returns (N, D): rows + embedding(speaker)."""
        if speakers.shape != rows.shape[:1]:
            raise ValueError(f"speaker conditioning got {rows.size(0)} rows but {speakers.numel()} speaker ids")
        return rows + self.embedding(speakers).to(rows.dtype)

    def extra_repr(self) -> str:
        return f"speakers={self.embedding.num_embeddings}, dim={self.embedding.embedding_dim}"
