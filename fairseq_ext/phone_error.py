"""Phone error rate: greedy CTC decoding and edit distance (the ``editdistance`` package).

PER = (substitutions + deletions + insertions) / reference phones, summed over a set of utterances
(not averaged per utterance), as SUPERB and Kaldi's TIMIT scoring report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, List, Optional, Sequence

import editdistance
import torch


def ctc_greedy_decode(
    log_probs: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, blank: int = 0
) -> List[List[int]]:
    """Best path decoding: the most likely class per frame, repeats collapsed, blanks dropped.

    Args:
        log_probs: ``(B, T, V)`` scores per frame (log-probabilities or logits: only the argmax counts).
        padding_mask: ``(B, T)``, True on padded frames (ignored), or None.
        blank: index of the CTC blank.
    Returns:
        ``B`` lists of class indices.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    best = log_probs.argmax(dim=-1)  # (B, T)
    if padding_mask is not None:
        if padding_mask.shape != best.shape:
            raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)}, expected {tuple(best.shape)}")
        lengths = (~padding_mask).sum(dim=1).tolist()
    else:
        lengths = [best.shape[1]] * best.shape[0]
    out = []
    for row, n in zip(best.tolist(), lengths):
        row = row[:n]
        out.append([c for i, c in enumerate(row) if c != blank and (i == 0 or c != row[i - 1])])
    return out


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance between two token sequences (substitutions, deletions, insertions cost 1)."""
    return int(editdistance.eval(list(ref), list(hyp)))


@dataclass
class PhoneErrors:
    """Edit operations and reference length summed over utterances; add two to pool them."""

    errors: int = 0
    ref_phones: int = 0

    @property
    def per(self) -> float:
        """Phone error rate (a fraction; NaN when there is no reference phone)."""
        return self.errors / self.ref_phones if self.ref_phones else float("nan")

    def __add__(self, other: "PhoneErrors") -> "PhoneErrors":
        return PhoneErrors(self.errors + other.errors, self.ref_phones + other.ref_phones)


def phone_errors(refs: Sequence[Sequence[Hashable]], hyps: Sequence[Sequence[Hashable]]) -> PhoneErrors:
    """Edit distance and reference length summed over paired utterances (phones as strings or indices)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return PhoneErrors(sum(edit_distance(r, h) for r, h in zip(refs, hyps)), sum(len(r) for r in refs))


__all__ = ["PhoneErrors", "ctc_greedy_decode", "edit_distance", "phone_errors"]
