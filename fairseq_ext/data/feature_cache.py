"""A feature cache for a frozen upstream: each utterance's hidden states are computed once per run.

:class:`CachedUpstream` wraps an :class:`~fairseq_ext.encoder.Upstream` and answers its ``forward`` from
a cache keyed by the content of each (unpadded) waveform, so a downstream head that sees the same
utterances every epoch runs the frozen encoder only in the first one. Batched output is the wrapped
upstream's, exactly: every hidden state ``(T_i, C)`` of an utterance is stored whole (float32) and a batch
is re-padded with zeros as :meth:`Upstream.forward` pads it.

Where: ``"memory"`` keeps the states in the process (lost when training ends); a folder keeps one
``{sha1 of the waveform}.npy`` per utterance, shape ``(L, T, C)`` float32, written atomically, reused by
later runs on the same upstream (the folder records the upstream's identity in ``upstream.json`` and
refuses another). Size: ``4 * (num_layers + 1) * dim`` bytes per frame, e.g. 3 * 64 * 4 = 768 B per
20 ms frame for the tiny test HuBERT, 13 * 768 * 4 = 40 KB per frame (2 MB per second of audio) for
HuBERT Base: use it for small corpora or with enough disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.encoder import frame_padding_mask

logger = logging.getLogger(__name__)


def waveform_key(wav: torch.Tensor) -> str:
    """Content key of one unpadded waveform ``(S,)``."""
    return hashlib.sha1(wav.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


class CachedUpstream:
    """An upstream whose per-utterance hidden states are cached (see the module docstring).

    Args:
        upstream: the frozen upstream; every attribute but ``forward`` is its own.
        where: ``"memory"`` or a folder.
        identity: what the upstream is (e.g. its checkpoint's path and content digest), checked
            against the folder's ``upstream.json``.
    """

    def __init__(self, upstream, where: str, identity: Optional[Dict] = None):
        self.inner = upstream
        self.folder: Optional[Path] = None if where == "memory" else Path(where)
        self.memory: Dict[str, List[torch.Tensor]] = {}
        self.hits = self.misses = 0
        if self.folder is not None:
            self._claim(identity or {})

    def _claim(self, identity: Dict) -> None:
        meta = self.folder / "upstream.json"
        if meta.is_file():
            found = json.loads(meta.read_text())
            if found != json.loads(json.dumps(identity)):
                raise UserError(f"feature cache {self.folder} holds features of another upstream ({found}); "
                                f"give another task.feature_cache folder or remove this one")
        else:
            with atomic_output(meta) as f:
                json.dump(identity, f)

    def __getattr__(self, name):  # model, dim, num_layers, num_frames, ... of the wrapped upstream
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _load(self, key: str) -> Optional[List[torch.Tensor]]:
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None:
            path = self.folder / f"{key}.npy"
            if path.is_file():
                return list(torch.from_numpy(np.load(path)))
        return None

    def _store(self, key: str, states: List[torch.Tensor]) -> None:
        if self.folder is None:
            self.memory[key] = states
            return
        with atomic_output(self.folder / f"{key}.npy", "wb") as f:
            np.save(f, torch.stack(states).cpu().numpy() if states[0].numel() else
                    np.zeros((len(states), 0, states[0].shape[-1]), np.float32))

    def forward(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                layers: Optional[Sequence[int]] = None) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """As :meth:`fairseq_ext.encoder.Upstream.forward`: ``(B, S)`` waveforms -> ``[(B, T, C)]`` per layer
        (all ``0..num_layers`` by default) and the ``(B, T)`` frame padding mask (None when none is padded)."""
        all_layers = list(range(self.inner.num_layers + 1))
        layers = all_layers if layers is None else list(layers)
        lengths = [wav.size(1)] * wav.size(0) if padding_mask is None else (~padding_mask).sum(1).tolist()
        keys = [waveform_key(w[:n]) for w, n in zip(wav, lengths)]
        found = [self._load(k) for k in keys]
        todo = [b for b, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:  # one batch of the missing utterances through the real upstream
            enc = self.inner.encode([self.inner.prepare(wav[b, :lengths[b]]) for b in todo], all_layers)
            for i, b in enumerate(todo):
                found[b] = [enc[layer][i].detach().cpu().float().contiguous() for layer in all_layers]
                self._store(keys[b], found[b])
        out = [torch.nn.utils.rnn.pad_sequence([f[layer] for f in found], batch_first=True).to(wav.device)
               for layer in layers]
        frame_mask = frame_padding_mask([len(f[0]) for f in found], wav.device)
        return out, frame_mask

    def __call__(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                 layers: Optional[Sequence[int]] = None) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        return self.forward(wav, padding_mask, layers)


__all__ = ["CachedUpstream", "waveform_key"]
