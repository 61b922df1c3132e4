"""``conformer_speaker``: utterance classifier (speaker ID, keyword spotting) on frames of any kind.

Pipeline, for a batch of zero-padded inputs with a padding mask:

1. input features ``(B, T, F)``: precomputed (homework log-Mels), the trainable log-Mel front-end
   (:class:`~fairseq_ext.modules.frontend.LogMelFrontend`, raw audio), or any frozen registered
   upstream (:class:`~fairseq_ext.modules.ssl_upstream.FrozenSSLUpstream`: HuBERT, PASE, a named
   log-Mel baseline, ...); which one follows
   ``task.input_type``;
2. optional per-utterance mean/variance normalisation over real frames (``input_norm``);
3. prenet ``Linear(F, d_model)``;
4. encoder: padding-safe Conformer layers (:class:`MaskedConformerEncoderLayer`, fairseq's layer
   with the padding leak fixed) or the homework seed's ``nn.TransformerEncoder``;
5. pooling over real frames: masked mean, self-attention, or attentive statistics;
6. projection ``Linear(pooled, embed_dim)`` (+ optional ReLU): the utterance embedding;
7. classifier: cosine (weights L2-normalised every step; for AM-softmax) or linear.

Every step only mixes real frames, so an utterance's embedding does not depend on the padding of
its batch (eval mode). The net output is ``{"embedding": (B, D), "logits": (B, K), "cosine": bool,
"padding_mask": (B, T) or None}``; logits never include the AM-softmax margin.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model

from fairseq_ext.criteria.am_softmax import CosineClassifier
from fairseq_ext.modules.masked_conformer import MaskedConformerEncoderLayer
from fairseq_ext.modules.pooling import POOLING_CHOICES as POOLING, build_pooling, valid_mask

logger = logging.getLogger(__name__)

ENCODER_CHOICES = ChoiceEnum(["conformer", "transformer"])
POOLING_CHOICES = ChoiceEnum(list(POOLING))
CLASSIFIER_CHOICES = ChoiceEnum(["cosine", "linear"])
MEL_INIT_CHOICES = ChoiceEnum(["htk", "slaney", "random"])
INPUT_NORM_CHOICES = ChoiceEnum(["none", "utterance"])


@dataclass
class ConformerSpeakerConfig(FairseqDataclass):
    encoder_type: ENCODER_CHOICES = field(  # type: ignore[valid-type]
        default="conformer", metadata={"help": "conformer (padding-safe fairseq Conformer layers) or "
                                               "transformer (the homework seed's nn.TransformerEncoder)"})
    d_model: int = field(default=256, metadata={"help": "encoder width (prenet output)"})
    encoder_layers: int = field(default=4, metadata={"help": "number of encoder layers"})
    attention_heads: int = field(default=4, metadata={"help": "self-attention heads"})
    ffn_dim: int = field(default=1024, metadata={"help": "feed-forward inner size"})
    depthwise_kernel: int = field(default=31, metadata={"help": "Conformer depthwise conv kernel (odd)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the encoder"})
    pooling: POOLING_CHOICES = field(  # type: ignore[valid-type]
        default="self_attention", metadata={"help": "utterance pooling over real frames"})
    embed_dim: int = field(default=256, metadata={"help": "utterance embedding size (projection output)"})
    embed_relu: bool = field(default=False, metadata={"help": "ReLU after the projection (the seed's head)"})
    classifier: CLASSIFIER_CHOICES = field(  # type: ignore[valid-type]
        default="cosine", metadata={"help": "cosine (for AM-softmax) or linear (plain cross-entropy)"})
    input_norm: INPUT_NORM_CHOICES = field(  # type: ignore[valid-type]
        default="none", metadata={"help": "utterance: per-utterance mean/variance normalisation of the "
                                          "input features over real frames"})
    # trainable log-Mel front-end (task.input_type=audio)
    n_fft: int = field(default=480, metadata={"help": "front-end FFT size (STFT kernel length)"})
    hop_length: int = field(default=160, metadata={"help": "front-end hop in samples"})
    n_mels: int = field(default=40, metadata={"help": "front-end Mel bins"})
    f_min: float = field(default=0.0, metadata={"help": "lowest Mel frequency (Hz)"})
    f_max: float = field(default=0.0, metadata={"help": "highest Mel frequency (Hz), 0 = Nyquist"})
    trainable_stft: bool = field(default=False, metadata={"help": "train the STFT basis (settings C, D)"})
    trainable_mel: bool = field(default=False, metadata={"help": "train the Mel basis (settings B, D)"})
    mel_init: MEL_INIT_CHOICES = field(  # type: ignore[valid-type]
        default="htk", metadata={"help": "Mel basis init: htk / slaney triangles (peak 1) or random"})
    maskout_start: int = field(default=-1, metadata={"help": "first Mel bin zeroed in the output (-1: none)"})
    maskout_end: int = field(default=-1, metadata={"help": "Mel bin after the last zeroed one (-1: none)"})
    # frozen SSL upstream (task.input_type=ssl)
    ssl_checkpoint: str = field(default="", metadata={
        "help": "frozen upstream for task.input_type=ssl: a checkpoint any registered upstream reads (HuBERT, "
                "wav2vec 2.0, dhubert, PASE/PASE+, a speaker/KWS model's front-end) or a named upstream "
                "(logmel; with options quoted on the command line: 'model.ssl_checkpoint=\"logmel:n_mels=80\"')"})
    ssl_layer: int = field(default=-1, metadata={"help": "upstream hidden state to use (HuBERT: 0 = Transformer "
                                                         "input), -1 = learned weighted sum of all"})


class TransformerStack(nn.Module):
    """The seed's encoder: ``nn.TransformerEncoder`` (post-norm, ReLU) with a key-padding mask. ``(B, T, C)``."""

    def __init__(self, d_model: int, layers: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, ffn_dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.encoder(x, src_key_padding_mask=padding_mask)


class ConformerStack(nn.Module):
    """Padding-safe Conformer layers: ``(B, T, C)`` in and out, padded frames zero."""

    def __init__(self, d_model: int, layers: int, heads: int, ffn_dim: int, dropout: float, kernel: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"model.depthwise_kernel must be odd, got {kernel}")
        self.layers = nn.ModuleList([
            MaskedConformerEncoderLayer(d_model, ffn_dim, heads, dropout, False, depthwise_conv_kernel_size=kernel)
            for _ in range(layers)
        ])

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x.transpose(0, 1)
        for layer in self.layers:
            x, _ = layer(x, padding_mask)
        return x.transpose(0, 1)


@register_model("conformer_speaker", dataclass=ConformerSpeakerConfig)
class ConformerSpeakerModel(BaseFairseqModel):
    """Utterance classifier; see the module docstring. Build with ``build_model(cfg, task)``."""

    def __init__(self, cfg: ConformerSpeakerConfig, num_classes: int, input_type: str, in_dim: int = 0,
                 sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg
        self.input_type = input_type
        self.frontend: Optional[nn.Module] = None
        if input_type == "audio":
            from fairseq_ext.modules.frontend import LogMelFrontend

            self.frontend = LogMelFrontend(
                sample_rate=sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
                f_min=cfg.f_min, f_max=cfg.f_max or None, trainable_stft=cfg.trainable_stft,
                trainable_mel=cfg.trainable_mel, mel_init=str(cfg.mel_init),
                maskout_start=cfg.maskout_start, maskout_end=cfg.maskout_end)
            in_dim = self.frontend.out_dim
        elif input_type == "ssl":
            from fairseq_ext.modules.ssl_upstream import FrozenSSLUpstream

            self.frontend = FrozenSSLUpstream(cfg.ssl_checkpoint, cfg.ssl_layer, sample_rate)
            in_dim = self.frontend.out_dim
        elif input_type != "homework":
            raise ValueError(f"unknown input_type {input_type!r}")
        if in_dim < 1:
            raise ValueError("in_dim (feature dimension) must be given for precomputed features")
        self.in_dim = in_dim
        self.prenet = nn.Linear(in_dim, cfg.d_model)
        if cfg.encoder_type == "conformer":
            self.encoder: nn.Module = ConformerStack(cfg.d_model, cfg.encoder_layers, cfg.attention_heads,
                                                     cfg.ffn_dim, cfg.dropout, cfg.depthwise_kernel)
        else:
            self.encoder = TransformerStack(cfg.d_model, cfg.encoder_layers, cfg.attention_heads,
                                            cfg.ffn_dim, cfg.dropout)
        self.pooling = build_pooling(str(cfg.pooling), cfg.d_model)
        self.projection = nn.Linear(self.pooling.out_dim, cfg.embed_dim)
        if cfg.classifier == "cosine":
            self.classifier: nn.Module = CosineClassifier(cfg.embed_dim, num_classes)
        else:
            self.classifier = nn.Linear(cfg.embed_dim, num_classes)
        self.is_cosine = cfg.classifier == "cosine"
        self.num_classes = num_classes

    @classmethod
    def build_model(cls, cfg: ConformerSpeakerConfig, task) -> "ConformerSpeakerModel":
        labels = task.labels
        in_dim = task.feature_dim if task.cfg.input_type == "homework" else 0
        return cls(cfg, len(labels), str(task.cfg.input_type), in_dim, task.cfg.sample_rate)

    # -- training hooks ------------------------------------------------------------------------

    def after_optimizer_step(self) -> None:
        """Project constrained parameters back (Mel basis into [0, 1]); the task calls it after each step."""
        if self.frontend is not None and hasattr(self.frontend, "clamp_mel_"):
            self.frontend.clamp_mel_()

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.after_optimizer_step()  # also clamps when driven by another task

    # -- forward -------------------------------------------------------------------------------

    def features(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Input frames: ``source`` ``(B, S)`` audio or ``(B, T, F)`` features -> ``((B, T, F), (B, T) or None)``."""
        if self.frontend is not None:
            if source.dim() != 2:
                raise ValueError(f"expected a (B, samples) waveform batch, got shape {tuple(source.shape)}")
            x, padding_mask = self.frontend(source, padding_mask)
        else:
            if source.dim() != 3 or source.shape[-1] != self.in_dim:
                raise ValueError(f"expected (B, T, {self.in_dim}) features, got shape {tuple(source.shape)}")
            x = source
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        if self.cfg.input_norm == "utterance":
            m = valid_mask(x, padding_mask)
            n = m.sum(1, keepdim=True).clamp(min=1)
            mean = (x * m).sum(1, keepdim=True) / n
            var = ((x - mean).pow(2) * m).sum(1, keepdim=True) / n
            x = (x - mean) * torch.rsqrt(var + 1e-5)
        return x, padding_mask

    def extract_embedding(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Utterance embeddings ``(B, embed_dim)`` (before the classifier) and the frame padding mask."""
        x, padding_mask = self.features(source, padding_mask)
        x = self.prenet(x.to(self.prenet.weight.dtype))
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = self.encoder(x, padding_mask)
        emb = self.projection(self.pooling(x, padding_mask))
        if self.cfg.embed_relu:
            emb = torch.relu(emb)
        return emb, padding_mask

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict:
        """
        Args:
            source: ``(B, S)`` waveform (input_type audio/ssl) or ``(B, T, F)`` features (homework).
            padding_mask: ``(B, S)`` or ``(B, T)``, True on padding, or None.
        Returns:
            ``{"embedding": (B, D), "logits": (B, K) margin-free, "cosine": bool,
            "padding_mask": (B, T) or None}``.
        """
        emb, padding_mask = self.extract_embedding(source, padding_mask)
        return {"embedding": emb, "logits": self.classifier(emb), "cosine": self.is_cosine,
                "padding_mask": padding_mask}


__all__ = ["ConformerSpeakerModel", "ConformerSpeakerConfig", "ConformerStack", "TransformerStack"]
