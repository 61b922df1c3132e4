"""``pase`` upstream: the PASE / PASE+ waveform encoder (:class:`~fairseq_ext.modules.pase_encoder.PaseEncoder`)
of a ``pase`` checkpoint, read through the encoder interface.

Hidden states, all ``(B, T, emb_dim)`` at the encoder's frame rate (``T = samples // hop``, hop 160):

* PASE (no dense skips): one state, the final embedding (``num_layers = 0``);
* PASE+ (``dense_skips=true``): state ``k`` (``0 <= k < n``, ``n`` conv blocks after SincNet) is
  conv block ``k + 1``'s dense-skip contribution (its 1x1 projection to ``emb_dim``, average-pooled
  to the output rate: exactly the term the encoder adds into its output); state ``n`` is the final
  embedding (``num_layers = n``). The SincNet block, the raw conv outputs (other widths and rates)
  and the recurrent layer's output (another width) are not exposed.

Padding-exact: the encoder zeroes every block's activations past each utterance's end, so a
zero-padded batch gives each utterance the numbers it gets alone (BatchNorm in eval mode is per
frame); pieces too short for one frame (< hop samples) are encoded as no frames.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from fairseq_ext.encoder import Upstream, register_upstream
from fairseq_ext.modules.pase_encoder import PaseEncoder


def _pase_encoder(model: nn.Module):
    if isinstance(model, PaseEncoder):
        return model
    enc = getattr(model, "encoder", None)
    return enc if isinstance(enc, PaseEncoder) else None


@register_upstream("pase")
class PaseUpstream(Upstream):
    """PASE / PASE+ hidden states (see the module docstring); ``model`` is a ``PaseModel`` or a ``PaseEncoder``."""

    def __init__(self, model: nn.Module, normalize: bool = False, sample_rate: int = 16000):
        encoder = _pase_encoder(model)
        if encoder is None:
            raise TypeError(f"{type(model).__name__} holds no PaseEncoder")
        self.model = encoder.eval()
        self.normalize, self.sample_rate = normalize, sample_rate
        self.frame_shift = encoder.hop
        self.dim = encoder.emb_dim
        self.num_layers = len(encoder.skips) if encoder.skips is not None else 0

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return _pase_encoder(model) is not None

    def num_frames(self, n_samples: int) -> int:
        return n_samples // self.frame_shift

    def hidden_states(self, chunks: List[torch.Tensor], lens: List[int], top: int) -> List[torch.Tensor]:
        """All ``num_layers + 1`` hidden states ``(B, T, emb_dim)`` of non-empty pieces ``(S_i,)``."""
        enc = self.model
        wav = nn.utils.rnn.pad_sequence(list(chunks), batch_first=True)  # (B, S)
        lengths = torch.tensor([len(c) for c in chunks], device=wav.device)
        mask = None
        if len(set(lengths.tolist())) > 1:
            mask = torch.arange(wav.size(1), device=wav.device)[None, :] >= lengths[:, None]
        emb, _, skips = enc.forward_with_skips(wav, mask)  # (B, emb_dim, T), per block (B, emb_dim, T)
        states = [s.transpose(1, 2) for s in skips]  # conv blocks after SincNet, then the embedding
        states.append(emb.transpose(1, 2))
        return states


__all__ = ["PaseUpstream"]
