"""Resume guard: never resume from a ``checkpoint_last.pt`` that a kill cut short."""

from __future__ import annotations

import glob
import logging
import os
import zipfile
from typing import Optional

from fairseq_ext.base.errors import UserError

logger = logging.getLogger("fairseq_ext.launch")


def is_complete_checkpoint(path: str) -> bool:
    """A torch zip archive with its central directory (a copy cut short has none)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80  # legacy (non-zip) torch pickle: cannot be checked cheaply


def resume_fallback(save_dir: str, suffix: str = "") -> Optional[str]:
    """The file to resume from when ``checkpoint_last{suffix}.pt`` exists but is incomplete.

    fairseq writes the first checkpoint of a save atomically but copies it (not atomically) to the
    others, ``checkpoint_last.pt`` included; a kill during that copy leaves a truncated file that
    stops every later resume. Returns None when there is nothing to fix, else the newest complete
    ``checkpoint*{suffix}.pt`` of ``save_dir`` (the copy's source).

    Raises:
        UserError: checkpoint_last is incomplete and no complete checkpoint is left.
    """
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    if not os.path.isfile(last) or is_complete_checkpoint(last):
        return None
    others = [p for p in glob.glob(os.path.join(glob.escape(save_dir), f"checkpoint*{suffix}.pt"))
              if os.path.abspath(p) != os.path.abspath(last) and os.path.isfile(p)]
    for path in sorted(others, key=os.path.getmtime, reverse=True):
        if is_complete_checkpoint(path):
            logger.warning("%s is incomplete (killed while fairseq copied it?): resuming from %s", last, path)
            return path
    raise UserError(f"{last} is incomplete (killed while it was written?) and {save_dir} holds no other complete "
                    f"checkpoint: move it away to start from scratch")


def guard_resume(cfg) -> None:
    """Point ``checkpoint.restore_file`` at a complete checkpoint when checkpoint_last.pt is cut short."""
    from omegaconf import open_dict

    ck = cfg.checkpoint
    if ck.restore_file != "checkpoint_last.pt" or getattr(cfg.distributed_training, "use_sharded_state", False):
        return
    fallback = resume_fallback(ck.save_dir, ck.checkpoint_suffix or "")
    if fallback is not None:
        with open_dict(cfg):
            ck.restore_file = os.path.abspath(fallback)
