"""Reproducible HuBERT span masks.

fairseq 0.12.3's ``HubertModel.apply_mask`` calls ``compute_mask_indices`` without a seed, and that
function then draws from a fresh, unseeded ``np.random.default_rng()`` per utterance, so two runs
with the same ``common.seed`` mask different frames. ``compute_mask_indices`` can draw from a
generator seeded by ``hash((seed, epoch, index))`` for each row; this context manager makes HuBERT's
own ``apply_mask`` use that, with ``epoch`` a per-call key (update number and call count) and
``index`` the row position offset by the distributed rank, so masks differ between rows, calls,
updates and ranks but are the same in every rerun.
"""

import contextlib
import functools
from typing import Iterator

import torch
import torch.distributed as dist
from fairseq.models.hubert import hubert as fairseq_hubert

ROWS_PER_RANK = 1 << 20  # row keys of different ranks never collide


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def seeded_mask_indices(seed: int, key: int, n_rows: int) -> Iterator[None]:
    """Within the block, HuBERT's ``compute_mask_indices`` (time and channel masks) is seeded by
    ``(seed, key, rank * ROWS_PER_RANK + row)`` for each of the ``n_rows`` rows of the batch."""
    original = fairseq_hubert.compute_mask_indices
    rows = torch.arange(n_rows) + _rank() * ROWS_PER_RANK
    fairseq_hubert.compute_mask_indices = functools.partial(original, seed=int(seed), epoch=int(key), indices=rows)
    try:
        yield
    finally:
        fairseq_hubert.compute_mask_indices = original
