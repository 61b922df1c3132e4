"""One interface to the layer features of a speech encoder ("upstream"), batched and padding-exact.

An :class:`Upstream` turns waveforms into hidden states, every layer from one forward pass:

* ``num_layers`` transformer layers give ``num_layers + 1`` hidden states: state 0 is the
  transformer's input (the projected CNN features), state ``L`` (1-based, as in fairseq) is what
  ``model.extract_features(wav, output_layer=L)`` returns;
* ``num_frames(n_samples)`` says how many frames ``n_samples`` of audio make (0: too short);
* ``forward(wav (B, S), padding_mask (B, S))`` -> (hidden states ``[(B, T, C)] * (num_layers + 1)``,
  frame padding mask ``(B, T)`` or None); ``encode(pieces, layers)`` is the same on a list of
  unpadded waveforms. Batching does not change the numbers (same as one utterance at a time,
  up to float rounding, ~1e-6).

Upstreams are found through a registry (:func:`register_upstream`, :func:`upstream_for_model`,
:func:`load_upstream`): each registered class says which models it ``accepts``. Kinds beyond
HuBERT live in :mod:`fairseq_ext.upstreams` (PASE / PASE+, the log-Mel front-end) and register
themselves the same way. Upstreams that need no checkpoint are *named*
(:func:`register_named_upstream`): ``load_upstream("logmel")`` or ``load_upstream("logmel:n_mels=80")``
builds one (a name that is not an existing file; options ``key=value`` after ``:``, comma-separated).
:class:`ChunkedReader` adds what the HuBERT-feature dumper needs on top (fairseq's ``max_chunk``
split, length-sorted batches).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.frames import conv_output_length, conv_receptive_field

logger = logging.getLogger(__name__)

MIN_FILL = 0.75
"""A batch holds pieces at least this fraction of its longest one (bounds padded compute)."""

UPSTREAMS: Dict[str, Type["Upstream"]] = {}
"""Registered upstream kinds by name, tried in registration order by :func:`upstream_for_model`."""

NAMED_UPSTREAMS: Dict[str, Callable[..., "Upstream"]] = {}
"""Upstreams built without a checkpoint, by name: ``factory(**options) -> Upstream`` (see :func:`load_upstream`)."""


class Upstream:
    """Hidden states of a frozen speech encoder; subclasses implement :meth:`num_frames` and :meth:`encode`.

    Attributes:
        model: the ``nn.Module`` holding the weights (move it with ``model.to(...)``).
        num_layers: transformer layers; hidden states are numbered ``0..num_layers``.
        dim: channels ``C`` of every hidden state.
        sample_rate: expected audio sample rate.
        frame_shift: samples between frames (320 for HuBERT: 50 Hz at 16 kHz).
        normalize: each waveform is layer-normalised first (the training task's ``normalize``).
    """

    model: torch.nn.Module
    num_layers: int
    dim: int
    sample_rate: int = 16000
    frame_shift: int = 320
    normalize: bool = False

    @classmethod
    def accepts(cls, model: torch.nn.Module) -> bool:
        """Whether this kind can read ``model``."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_frames(self, n_samples: int) -> int:
        """Frames of ``n_samples`` samples encoded at once (0 when too short for one frame)."""
        raise NotImplementedError

    def check_layers(self, layers: Sequence[int]) -> None:
        """Raise :class:`UserError` unless every layer is in ``0..num_layers``."""
        bad = [layer for layer in layers if not 0 <= layer <= self.num_layers]
        if bad:
            raise UserError(f"layer {bad[0]} is out of range: the model has {self.num_layers} layers "
                            f"(0 = transformer input)")

    def prepare(self, wav: torch.Tensor) -> torch.Tensor:
        """One unpadded waveform ``(S,)`` as the model reads it (layer-normalised when ``normalize``)."""
        return F.layer_norm(wav, wav.shape) if self.normalize else wav

    def encode(self, pieces: Sequence[torch.Tensor], layers: Sequence[int]) -> Dict[int, List[torch.Tensor]]:
        """Encode prepared waveforms ``(S_i,)`` as one padded batch.

        Returns:
            ``{layer: [(T_i, C) per piece]}`` with ``T_i = num_frames(S_i)`` (``(0, C)`` when too short).
        """
        self.check_layers(layers)
        out: Dict[int, List[torch.Tensor]] = {layer: [] for layer in layers}
        lens = [self.num_frames(len(p)) for p in pieces]
        keep = [i for i, n in enumerate(lens) if n > 0]
        states: List[torch.Tensor] = []
        if keep:
            states = self.hidden_states([pieces[i] for i in keep], [lens[i] for i in keep], max(layers))
        empty = pieces[0].new_zeros((0, self.dim)) if pieces else None
        pos = {i: k for k, i in enumerate(keep)}
        for layer in layers:
            for i, n in enumerate(lens):
                out[layer].append(states[layer][pos[i], :n] if i in pos else empty)
        return out

    def hidden_states(self, chunks: List[torch.Tensor], lens: List[int], top: int) -> List[torch.Tensor]:
        """Hidden states ``0..top`` (at least), each ``(B, T, C)`` with ``T >= max(lens)``, of non-empty
        prepared waveforms ``chunks`` ``(S_i,)`` whose frame counts are ``lens``; padded frames are ignored."""
        raise NotImplementedError

    def forward(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                layers: Optional[Sequence[int]] = None) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """
        Args:
            wav: ``(B, S)`` waveforms, zero-padded on the right.
            padding_mask: ``(B, S)``, True on padding, or None.
            layers: hidden states to compute (default all, ``0..num_layers``).
        Returns:
            ``(states, frame_padding_mask)``: one ``(B, T, C)`` per requested layer, padded frames
            zero; ``(B, T)`` True on padded frames, or None when no frame is padded.
        """
        layers = list(range(self.num_layers + 1)) if layers is None else list(layers)
        self.check_layers(layers)
        lengths = [wav.size(1)] * wav.size(0) if padding_mask is None else (~padding_mask).sum(1).tolist()
        out = self.encode([self.prepare(w[:n]) for w, n in zip(wav, lengths)], layers)
        states = [torch.nn.utils.rnn.pad_sequence(out[layer], batch_first=True) for layer in layers]
        return states, frame_padding_mask([self.num_frames(n) for n in lengths], wav.device)

    def __call__(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                 layers: Optional[Sequence[int]] = None) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        return self.forward(wav, padding_mask, layers)


def frame_padding_mask(frames: Sequence[int], device: torch.device) -> Optional[torch.Tensor]:
    """``(B, max(frames))`` bool mask, True on frames past each row's count; None when no row is padded."""
    if len(set(frames)) <= 1:
        return None
    return torch.arange(max(frames), device=device)[None, :] >= torch.tensor(frames, device=device)[:, None]


def register_upstream(name: str) -> Callable[[Type[Upstream]], Type[Upstream]]:
    """Class decorator: make an :class:`Upstream` subclass known to :func:`upstream_for_model` as ``name``."""
    def add(cls: Type[Upstream]) -> Type[Upstream]:
        if name in UPSTREAMS and UPSTREAMS[name] is not cls:
            raise ValueError(f"upstream {name!r} is registered twice")
        UPSTREAMS[name] = cls
        return cls
    return add


def register_named_upstream(name: str) -> Callable[[Callable[..., Upstream]], Callable[..., Upstream]]:
    """Decorator: make ``factory(**options) -> Upstream`` loadable as ``load_upstream("name:key=value,...")``.

    Option values arrive as strings; the factory converts them (see :func:`parse_upstream_name`).
    """
    if not name.isidentifier():
        raise ValueError(f"upstream name {name!r} must be an identifier")

    def add(factory: Callable[..., Upstream]) -> Callable[..., Upstream]:
        if name in NAMED_UPSTREAMS and NAMED_UPSTREAMS[name] is not factory:
            raise ValueError(f"named upstream {name!r} is registered twice")
        NAMED_UPSTREAMS[name] = factory
        return factory
    return add


def _register_kinds() -> None:
    """Import the upstream kinds beyond HuBERT (they register themselves)."""
    import fairseq_ext.upstreams  # noqa: F401


def parse_upstream_name(spec: str) -> Tuple[str, Dict[str, str]]:
    """``"logmel:n_mels=80,n_fft=400"`` -> ``("logmel", {"n_mels": "80", "n_fft": "400"})``."""
    name, _, rest = spec.partition(":")
    options: Dict[str, str] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserError(f"upstream {spec!r}: option {item!r} is not key=value "
                            f"(write e.g. {name}:n_mels=80,n_fft=400)")
        options[key.strip()] = value.strip()
    return name.strip(), options


def upstream_for_model(model: torch.nn.Module, normalize: bool = False, sample_rate: int = 16000) -> Upstream:
    """The registered upstream that reads ``model`` (the first whose ``accepts`` is True)."""
    _register_kinds()
    for cls in UPSTREAMS.values():
        if cls.accepts(model):
            return cls(model, normalize=normalize, sample_rate=sample_rate)
    raise UserError(f"{type(model).__name__} is not a model whose layer features can be read "
                    f"(known kinds: {', '.join(UPSTREAMS)}); use a HuBERT-family, PASE or speaker/KWS "
                    f"checkpoint")


def load_upstream(ckpt_path: str, device: str = "cpu", trusted: bool = False) -> Upstream:
    """A checkpoint file or a named upstream, wrapped in its registered upstream kind.

    ``ckpt_path`` that is an existing file is loaded with :func:`fairseq_ext.load_model` (the task's
    ``normalize`` and ``sample_rate`` come with it); otherwise it is read as ``name[:key=value,...]``
    of :data:`NAMED_UPSTREAMS` (e.g. ``logmel:n_mels=80``). Raises :class:`UserError` for a missing
    file that is no known name (listing the names), an unloadable file, and models no upstream accepts.
    """
    from fairseq_ext.checkpoint import CheckpointError, load_model

    _register_kinds()
    if not Path(ckpt_path).is_file():
        if str(ckpt_path).partition(":")[0].strip() in NAMED_UPSTREAMS:
            name, options = parse_upstream_name(str(ckpt_path))
            try:
                upstream = NAMED_UPSTREAMS[name](**options)
            except TypeError as e:
                raise UserError(f"upstream {ckpt_path!r}: {e}") from None
            upstream.model.to(device)
            return upstream
        raise UserError(f"checkpoint {ckpt_path} does not exist, and it is no named upstream "
                        f"(names: {', '.join(sorted(NAMED_UPSTREAMS))}, e.g. logmel:n_mels=80)")
    try:
        model, _, task = load_model(ckpt_path, device=device, trusted=trusted)
    except (FileNotFoundError, CheckpointError) as e:
        raise UserError(str(e)) from None
    cfg = task.cfg
    return upstream_for_model(model, bool(getattr(cfg, "normalize", False)), int(getattr(cfg, "sample_rate", 16000)))


@register_upstream("hubert")
class HubertUpstream(Upstream):
    """fairseq's HuBERT (and this package's subclasses such as dhubert), wav2vec 2.0, and fine-tuned
    HuBERT-CTC (its pretrained encoder is read).

    Padding-exact batches: the CNN runs one piece at a time (HuBERT Base's first conv layer
    normalises over time, so zero padding would change a piece's CNN output), or on the padded
    batch when the CNN is frame-local (``extractor_mode=layer_norm``); the transformer runs on the
    padded batch with an exact frame padding mask. The model's own steps are called (``forward_features``,
    ``layer_norm``, ``post_extract_proj``, ``encoder.extract_features``, whose ``layer_results``
    give every layer), exactly as ``extract_features(mask=False)`` does.
    """

    def __init__(self, model: torch.nn.Module, normalize: bool = False, sample_rate: int = 16000):
        from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

        if hasattr(model, "w2v_encoder"):  # fine-tuned HubertCtc / HubertSeq2Seq
            model = model.w2v_encoder.w2v_model
        self.model = model.eval()
        self.normalize, self.sample_rate = normalize, sample_rate
        self.num_layers = len(model.encoder.layers)
        self.dim = model.encoder.embedding_dim
        extractor = model.feature_extractor
        convs = [m for m in extractor.modules() if isinstance(m, torch.nn.Conv1d)]
        if any(c.padding[0] or c.dilation[0] != 1 for c in convs):
            raise UserError(f"{type(model).__name__}'s CNN has padded or dilated convolutions; its frame "
                            f"count is not known here")
        self.conv_layers = [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]
        self.frame_shift = conv_receptive_field(self.conv_layers)[1]
        norms = [m for m in extractor.modules() if isinstance(
            m, (torch.nn.GroupNorm, torch.nn.BatchNorm1d, torch.nn.InstanceNorm1d))]
        # Frame-local CNN (every norm is a LayerNorm over channels): safe to run on padded audio.
        self.cnn_batchable = isinstance(extractor, ConvFeatureExtractionModel) and not norms

    @classmethod
    def accepts(cls, model: torch.nn.Module) -> bool:
        model = model.w2v_encoder.w2v_model if hasattr(model, "w2v_encoder") else model
        return all(hasattr(model, a) for a in ("feature_extractor", "layer_norm", "post_extract_proj",
                                                "dropout_input")) and hasattr(getattr(model, "encoder", None),
                                                                             "extract_features")

    def num_frames(self, n_samples: int) -> int:
        return conv_output_length(n_samples, self.conv_layers)

    def cnn(self, source: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` -> CNN features ``(B, C, T)``, as the model's forward computes them."""
        forward_features = getattr(self.model, "forward_features", None)
        return forward_features(source) if forward_features is not None else self.model.feature_extractor(source)

    def hidden_states(self, chunks: List[torch.Tensor], lens: List[int], top: int) -> List[torch.Tensor]:
        """Hidden states ``0..top``, each ``(B, T, C)``, of non-empty pieces with frame counts ``lens``."""
        source = torch.nn.utils.rnn.pad_sequence(list(chunks), batch_first=True)  # (B, S)
        if self.cnn_batchable and len(chunks) > 1:
            feats = self.cnn(source)[..., : max(lens)]  # (B, C, T)
        else:
            per = [self.cnn(c[None]) for c in chunks]  # (1, C, T_i)
            feats = per[0].new_zeros(len(per), per[0].size(1), max(lens))
            for b, f in enumerate(per):
                feats[b, :, : f.size(-1)] = f[0]
        padding_mask = None
        if len(set(lens)) > 1:
            frame = torch.arange(max(lens), device=feats.device)
            padding_mask = frame[None, :] >= torch.tensor(lens, device=feats.device)[:, None]
        m = self.model
        x = m.layer_norm(feats.transpose(1, 2))  # (B, T, C)
        if m.post_extract_proj is not None:
            x = m.post_extract_proj(x)
        x = m.dropout_input(x)
        states = [x if padding_mask is None else x.masked_fill(padding_mask[..., None], 0.0)]
        if top > 0:
            _, layer_results = m.encoder.extract_features(x, padding_mask=padding_mask, tgt_layer=top - 1)
            if len(layer_results) != top:
                raise UserError(f"{type(m).__name__}'s encoder gave {len(layer_results)} layer results for "
                                f"{top} layers; its layer features cannot be read")
            states += [r[0].transpose(0, 1) for r in layer_results]  # (T, B, C) -> (B, T, C)
        return states


def plan_batches(lengths: Sequence[int], batch_samples: int, min_fill: float = MIN_FILL) -> List[List[int]]:
    """Group item indices into batches of similar length.

    Items are sorted by decreasing length and packed greedily while ``count * longest`` stays
    within ``batch_samples`` and each item is at least ``min_fill`` times the batch's longest
    (bounding the padding computed); an item longer than the bound forms its own batch.
    ``batch_samples <= 0`` gives one item per batch, in input order.
    """
    if batch_samples <= 0:
        return [[i] for i in range(len(lengths))]
    batches: List[List[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        longest = lengths[batches[-1][0]] if batches else 0
        if (batches and (len(batches[-1]) + 1) * longest <= batch_samples
                and lengths[i] >= min_fill * longest):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class ChunkedReader:
    """Layer features of whole utterances (numpy in, numpy out), in length-sorted padded batches.

    As fairseq's ``dump_hubert_feature.py``: an utterance longer than ``max_chunk`` samples is cut
    (after normalisation of the whole waveform) into consecutive pieces of ``max_chunk`` samples,
    each encoded on its own, their frames concatenated; a last piece too short for one frame
    yields none.

    Args:
        upstream: the encoder.
        layers: hidden states to read (``0..num_layers``).
        max_chunk: longest piece in samples (None: no split).
    """

    def __init__(self, upstream: Upstream, layers: Sequence[int], max_chunk: Optional[int] = None):
        upstream.check_layers(layers)
        self.upstream, self.layers, self.max_chunk = upstream, list(layers), max_chunk
        if max_chunk is not None and upstream.num_frames(max_chunk) < 1:
            raise UserError(f"--max_chunk {max_chunk} is shorter than the CNN's receptive field "
                            f"(no frame fits); use at least a few thousand samples")

    def pieces(self, n_samples: int) -> List[Tuple[int, int]]:
        """``(start, end)`` sample ranges encoded separately."""
        step = self.max_chunk or max(n_samples, 1)
        return [(s, min(s + step, n_samples)) for s in range(0, n_samples, step)
                if self.upstream.num_frames(min(s + step, n_samples) - s) > 0]

    def num_frames(self, n_samples: int) -> int:
        """Feature frames of an utterance of ``n_samples`` samples."""
        return sum(self.upstream.num_frames(e - s) for s, e in self.pieces(n_samples))

    @torch.inference_mode()
    def extract(self, wavs: Sequence[np.ndarray], batch_samples: int = 0) -> List[Dict[int, np.ndarray]]:
        """``{layer: (frames_i, C) float32}`` of each waveform ``(S_i,)``.

        Args:
            batch_samples: bound on padded samples per forward pass (0: one piece at a time).
        """
        up = self.upstream
        pieces: List[torch.Tensor] = []
        owner: List[int] = []
        for i, wav in enumerate(wavs):
            x = up.prepare(torch.as_tensor(np.asarray(wav, dtype=np.float32), device=up.device))
            for s, e in self.pieces(len(x)):
                pieces.append(x[s:e])
                owner.append(i)
        out: Dict[int, List[Optional[torch.Tensor]]] = {layer: [None] * len(pieces) for layer in self.layers}
        for batch in plan_batches([len(p) for p in pieces], batch_samples):
            feats = up.encode([pieces[j] for j in batch], self.layers)
            for layer in self.layers:
                for j, f in zip(batch, feats[layer]):
                    out[layer][j] = f
        by_owner: List[List[int]] = [[] for _ in wavs]
        for j, i in enumerate(owner):
            by_owner[i].append(j)
        result: List[Dict[int, np.ndarray]] = []
        for mine in by_owner:
            result.append({layer: torch.cat([out[layer][j] for j in mine]).float().cpu().numpy() if mine
                           else np.zeros((0, up.dim), np.float32) for layer in self.layers})
        return result
