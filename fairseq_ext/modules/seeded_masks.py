"""Reproducible HuBERT span masks.

fairseq 0.12.3's ``HubertModel.apply_mask`` calls ``compute_mask_indices`` without a seed, and that
function then draws from a fresh, unseeded ``np.random.default_rng()`` per utterance, so two runs
with the same ``common.seed`` mask different frames. ``compute_mask_indices`` can instead draw from
a generator seeded by ``hash((seed, epoch, index))`` for each row. :func:`seeded_apply_mask` does
HuBERT's masking (time spans replaced by the mask embedding, then channel spans zeroed) with those
arguments: ``epoch`` is a per-call key (the owner passes update number and call count) and
``index`` the row position offset by the distributed rank, so masks differ between rows, calls,
updates and ranks but are the same in every rerun.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from fairseq.data.data_utils import compute_mask_indices
from fairseq.models.hubert.hubert import HubertModel

ROWS_PER_RANK = 1 << 20  # row keys of different ranks never collide


def distributed_rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def seeded_apply_mask(model: HubertModel, x: torch.Tensor, padding_mask: Optional[torch.Tensor],
                      seed: int, key: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """HuBERT's span masking of ``x`` (B, T, C) with masks seeded by ``(seed, key, rank *
    ROWS_PER_RANK + row)`` for each row; ``model`` supplies the masking settings (``mask_prob``,
    ``mask_length``, ``mask_channel_*`` ...) and ``mask_emb``.

    Args:
        padding_mask: (B, T) bool, True = padding, or None.
    Returns:
        ``(x, mask_indices)``: x with masked frames set to ``mask_emb`` (modified in place, as
        HuBERT does) and masked channels zeroed; mask_indices (B, T) bool, or None when
        ``mask_prob`` is 0.
    """
    B, T, C = x.shape
    seeding = dict(seed=int(seed), epoch=int(key), indices=torch.arange(B) + distributed_rank() * ROWS_PER_RANK)
    mask_indices = None
    if model.mask_prob > 0:
        spans = compute_mask_indices((B, T), padding_mask, model.mask_prob, model.mask_length, model.mask_selection,
                                     model.mask_other, min_masks=2, no_overlap=model.no_mask_overlap,
                                     min_space=model.mask_min_space, **seeding)
        mask_indices = torch.from_numpy(spans).to(x.device)
        x[mask_indices] = model.mask_emb
    if model.mask_channel_prob > 0:
        channels = compute_mask_indices((B, C), None, model.mask_channel_prob, model.mask_channel_length,
                                        model.mask_channel_selection, model.mask_channel_other,
                                        no_overlap=model.no_mask_channel_overlap,
                                        min_space=model.mask_channel_min_space, **seeding)
        x[torch.from_numpy(channels).to(x.device).unsqueeze(1).expand(-1, T, -1)] = 0
    return x, mask_indices
