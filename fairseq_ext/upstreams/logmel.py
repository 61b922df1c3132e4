"""``logmel`` upstream: the spectral front-end (:class:`~fairseq_ext.modules.frontend.LogMelFrontend`,
fixed or trainable STFT / Mel bases, settings A-D) as a one-state upstream.

Two ways in:

* by name, a fixed log-Mel baseline: ``load_upstream("logmel")`` or with options,
  ``load_upstream("logmel:n_mels=80,n_fft=400,hop_length=160")`` (any :class:`LogMelFrontend`
  argument; defaults 40 Mels, ``n_fft`` 480, hop 160, 16 kHz);
* from a trained ``conformer_speaker`` checkpoint (speaker ID, KWS) with ``task.input_type=audio``:
  its (possibly trained) front-end.

One hidden state (``num_layers = 0``): the log-Mel frames ``(B, T, n_mels)``. Frames are centred
(zero padding of ``n_fft // 2`` on both sides), ``T = (S + 2 (n_fft // 2) - n_fft) // hop + 1``
(``S // hop + 1`` for an even ``n_fft``); the zero centre padding makes a zero-padded batch give each
utterance its own frames exactly.
"""

from __future__ import annotations

import inspect
from typing import Any, List, Optional

import torch
import torch.nn as nn

from fairseq_ext.base.errors import UserError
from fairseq_ext.encoder import Upstream, register_named_upstream, register_upstream
from fairseq_ext.modules.frontend import LogMelFrontend


def _frontend(model: nn.Module) -> Optional[LogMelFrontend]:
    if isinstance(model, LogMelFrontend):
        return model
    front = getattr(model, "frontend", None)
    return front if isinstance(front, LogMelFrontend) else None


@register_upstream("logmel")
class LogMelUpstream(Upstream):
    """Log-Mel frames as the one hidden state; ``model`` is a ``LogMelFrontend`` or a model holding one as ``frontend``."""

    num_layers = 0

    def __init__(self, model: nn.Module, normalize: bool = False, sample_rate: int = 16000):
        front = _frontend(model)
        if front is None:
            raise TypeError(f"{type(model).__name__} holds no LogMelFrontend")
        self.model = front.eval()
        self.normalize = normalize
        self.sample_rate = front.sample_rate
        self.frame_shift = front.hop_length
        self.dim = front.n_mels

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return _frontend(model) is not None

    def num_frames(self, n_samples: int) -> int:
        if n_samples <= 0:
            return 0
        n_fft = self.model.n_fft
        return max(0, (n_samples + 2 * (n_fft // 2) - n_fft) // self.frame_shift + 1)

    def hidden_states(self, chunks: List[torch.Tensor], lens: List[int], top: int) -> List[torch.Tensor]:
        wav = nn.utils.rnn.pad_sequence(list(chunks), batch_first=True)  # (B, S); zeros = centre padding
        feats, _ = self.model(wav)  # (B, T, n_mels)
        return [feats]


def _convert(value: str, default: Any, key: str) -> Any:
    if value.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if default is None:  # win_length, f_max, mel_norm
            for kind in (int, float):
                try:
                    return kind(value)
                except ValueError:
                    pass
    except ValueError:
        raise UserError(f"upstream option {key}={value!r} is not a {type(default).__name__}") from None
    return value


@register_named_upstream("logmel")
def logmel(**options: str) -> LogMelUpstream:
    """A fixed log-Mel baseline; ``options`` (strings) are :class:`LogMelFrontend` arguments."""
    params = inspect.signature(LogMelFrontend).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise UserError(f"logmel upstream: unknown option(s) {', '.join(unknown)}; known: {', '.join(params)}")
    kwargs = {k: _convert(v, params[k].default, k) for k, v in options.items()}
    try:
        front = LogMelFrontend(**kwargs)
    except ValueError as e:
        raise UserError(f"logmel upstream: {e}") from None
    return LogMelUpstream(front)


__all__ = ["LogMelUpstream", "logmel"]
