"""Model ``dhubert``: HuBERT with a speaker adversary (behind a gradient-reversal layer) and a pitch head.

- Speaker adversary: output of transformer layer ``spk_layer`` -> GRL -> masked pooling over valid
  frames (all of them, or only the unmasked ones: ``spk_frames``), or with ``spk_unit=frame`` each
  of those frames on its own -> running standardisation -> MLP -> ``n_speakers`` logits
  (fairseq_ext.modules.speaker_classifier); the MLP also replays a memory of recent embeddings. The
  head learns to identify the speaker, the encoder below ``spk_layer`` receives ``-lambda`` times
  its gradient and learns to hide the speaker.
- Pitch head: output of layer ``pitch_layer`` -> MLP -> per frame [log-F0 estimate, voicing logit].
  ``pitch_mode=auxiliary`` trains the encoder to keep pitch there; ``adversarial`` puts the head
  behind the GRL too (the encoder learns to remove pitch).
- ``lambda`` follows ``grl_schedule`` (constant | dann | linear, see fairseq_ext.modules.grl) of
  the number of updates, which fairseq passes in through ``set_num_updates``.

The layer outputs are recorded by hooks during HuBERT's single encoder pass (no second pass), and
``extract_features`` is HuBERT's, so fairseq's feature dumping works on these checkpoints.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from omegaconf import II
from torch import nn

from fairseq_ext.modules.grl import GRL_SCHEDULES, GradientReversal, grl_lambda
from fairseq_ext.modules.pooling import POOLING_CHOICES
from fairseq_ext.modules.seeded_masks import seeded_mask_indices
from fairseq_ext.modules.speaker_classifier import SPK_UNITS, SpeakerClassifier
from fairseq_ext.modules.speaker_conditioning import SpeakerConditioning
from fairseq_ext.modules.speaker_memory import SpeakerMemory

logger = logging.getLogger(__name__)

PITCH_MODES = ("auxiliary", "adversarial")
SPK_FRAMES = ("all", "unmasked")
SPK_ADVERSARIES = ("reverse", "confusion")


@dataclass
class DHubertConfig(HubertConfig):
    spk_layer: int = field(
        default=6, metadata={"help": "1-based transformer layer feeding the speaker adversary; 0 = no speaker head"})
    spk_pooling: ChoiceEnum(POOLING_CHOICES) = field(  # type: ignore[valid-type]
        default="mean", metadata={"help": "pooling of the speaker adversary: mean, self_attention, attentive "
                                          "(MLP-scored mean) or attentive_stats (weighted mean and std)"})
    spk_unit: ChoiceEnum(SPK_UNITS) = field(  # type: ignore[valid-type]
        default="utterance", metadata={"help": "what the speaker adversary classifies: utterance = one pooled "
                                               "vector per utterance (spk_pooling), frame = every valid frame "
                                               "on its own (many more examples per update, and the reversed "
                                               "gradient reaches every frame)"})
    spk_adversary: ChoiceEnum(SPK_ADVERSARIES) = field(  # type: ignore[valid-type]
        default="reverse", metadata={"help": "how the encoder fights the speaker classifier: reverse = gradient "
                                             "reversal (the encoder maximises lambda x the classifier's "
                                             "cross-entropy); confusion = the encoder minimises lambda x the "
                                             "cross-entropy to the uniform distribution through a frozen copy of "
                                             "the classifier, which trains on detached features (bounded: it "
                                             "stops pushing once the classifier is at chance); confusion needs "
                                             "spk_unit=frame or spk_pooling=mean"})
    spk_frames: ChoiceEnum(SPK_FRAMES) = field(  # type: ignore[valid-type]
        default="all", metadata={"help": "frames the speaker adversary pools over: all = every valid frame, "
                                         "unmasked = the valid frames that were not replaced by the mask "
                                         "embedding"})
    spk_standardize: bool = field(
        default=True, metadata={"help": "standardise the pooled vector per channel with running statistics "
                                        "before the speaker classifier, so that the encoder cannot hide "
                                        "speaker cues from the adversary by shrinking their scale"})
    spk_memory_size: int = field(
        default=256, metadata={"help": "the speaker classifier also trains, at every update, on the detached "
                                       "embeddings of the last N training utterances (frames, with "
                                       "spk_unit=frame; the encoder gets no gradient from them); 0 = only "
                                       "the current batch"})
    spk_condition: bool = field(
        default=False, metadata={"help": "speaker-conditioned masked prediction (ContentVec): add a learned "
                                         "embedding of the true speaker to the encoder output in front of "
                                         "final_proj (training objective only, not extract_features), so "
                                         "speaker-dependent k-means targets do not force the encoder to keep "
                                         "the speaker; needs speaker labels"})
    spk_hidden_dim: int = field(default=256, metadata={"help": "hidden size of the speaker classifier MLP"})
    head_dropout: float = field(default=0.1, metadata={"help": "dropout inside the speaker and pitch heads"})
    pitch_layer: int = field(
        default=6, metadata={"help": "1-based transformer layer feeding the pitch head; 0 = no pitch head"})
    pitch_mode: ChoiceEnum(PITCH_MODES) = field(  # type: ignore[valid-type]
        default="auxiliary", metadata={"help": "auxiliary: plain multi-task pitch head; adversarial: behind the GRL"})
    pitch_hidden_dim: int = field(default=256, metadata={"help": "hidden size of the pitch head MLP"})
    grl_schedule: ChoiceEnum(GRL_SCHEDULES) = field(  # type: ignore[valid-type]
        default="dann", metadata={"help": "GRL strength schedule: constant, dann (2/(1+exp(-10p))-1), linear"})
    grl_lambda_max: float = field(default=1.0, metadata={"help": "final GRL strength lambda"})
    grl_warmup_updates: int = field(
        default=0, metadata={"help": "updates over which dann/linear ramp up (p = updates / this); "
                                     "0 = optimization.max_update"})
    seeded_masks: bool = field(
        default=True, metadata={"help": "draw HuBERT's span masks from generators seeded by (mask_seed, update, "
                                        "call, row, rank), so reruns mask the same frames (fairseq 0.12.3's "
                                        "masks are unseeded); false = fairseq's behaviour"})
    mask_seed: int = field(default=II("common.seed"), metadata={"help": "seed of the span masks (seeded_masks)"})
    max_update: int = field(
        default=II("optimization.max_update"), metadata={"help": "training length; the GRL ramp's default length"})


class PitchHead(nn.Module):
    """Frame-level pitch predictor: (B, T, C) -> (B, T, 2) = [log-F0 estimate, voicing logit].

    Args:
        in_dim: frame feature size C.
        hidden_dim: MLP hidden size.
        dropout: dropout before the output layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C). Returns (B, T, 2)."""
        return self.mlp(x)


class _TapHook:
    """Picklable/deep-copyable hook that forwards a layer's input or output to its LayerTaps."""

    def __init__(self, taps: "LayerTaps", index: int, kind: str) -> None:
        self.taps, self.index, self.kind = taps, index, kind

    def __call__(self, module: nn.Module, args, output=None) -> None:
        if self.taps.active:
            x = args[0] if self.kind == "input" else output
            self.taps.record(self.index, self.kind, x[0] if isinstance(x, tuple) else x)


class LayerTaps:
    """Records hidden states of a layer stack during one forward pass, through module hooks.

    ``state_after(k)`` is the residual stream after layer ``k`` (0-based) has been applied or
    skipped by LayerDrop: the output of layer ``k`` if it ran, else the input of the next layer
    that ran, else the stack's final output.
    """

    def __init__(self, layers: nn.ModuleList, stack: nn.Module) -> None:
        self.active = False
        self.events: List[Tuple[int, str, torch.Tensor]] = []  # layers: T x B x C; stack ("final"): B x T x C
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(_TapHook(self, i, "input"))
            layer.register_forward_hook(_TapHook(self, i, "output"))
        stack.register_forward_hook(_TapHook(self, len(layers), "final"))

    def record(self, index: int, kind: str, x: torch.Tensor) -> None:
        self.events.append((index, kind, x))

    def start(self) -> None:
        self.events, self.active = [], True

    def stop(self) -> None:
        self.active = False

    def clear(self) -> None:
        self.events = []

    def state_after(self, k: int) -> torch.Tensor:
        """Hidden state after layer ``k`` (0-based): (B, T', C), T' possibly padded at the end."""
        for i, kind, x in self.events:
            if (kind == "output" and i == k) or (kind == "input" and i > k):
                return x.transpose(0, 1)
            if kind == "final":
                return x
        raise RuntimeError("no layer state was recorded: was the encoder run between start() and stop()?")


@register_model("dhubert", dataclass=DHubertConfig)
class DHubertModel(HubertModel):
    """HuBERT + speaker adversary + pitch head; outputs add ``spk_logits`` (N, n_speakers) and
    ``spk_embedding`` (N, D) (N = B utterances, or with ``spk_unit=frame`` the N valid frames, whose
    utterances ``spk_owner`` (N,) gives), in training with a filled memory ``spk_memory_logits`` (N, n_speakers)
    and ``spk_memory_labels`` (N,), ``pitch_pred`` (B, T, 2) and ``grl_lambda`` to HuBERT's."""

    def __init__(self, cfg: DHubertConfig, task_cfg, dictionaries: List[Dictionary], n_speakers: int = 0) -> None:
        super().__init__(cfg, task_cfg, dictionaries)
        n_layers = cfg.encoder_layers
        for name in ("spk_layer", "pitch_layer"):
            if not 0 <= getattr(cfg, name) <= n_layers:
                raise ValueError(f"model.{name}={getattr(cfg, name)} must be in [0, {n_layers}] (encoder_layers)")
        self.spk_layer, self.pitch_layer = cfg.spk_layer, cfg.pitch_layer
        self.spk_unmasked_only = str(cfg.spk_frames) == "unmasked"
        self.mask_seed: Optional[int] = cfg.mask_seed if cfg.seeded_masks else None
        if self.mask_seed is not None and not isinstance(self.mask_seed, int):
            # e.g. "${common.seed}" in a config built outside hydra
            logger.warning("model.mask_seed=%r is not an integer: span masks are seeded with 1", self.mask_seed)
            self.mask_seed = 1
        self._mask_calls = 0  # apply_mask calls since the last set_num_updates (gradient accumulation, validation)
        self._mask_indices: Optional[torch.Tensor] = None
        self.pitch_adversarial = cfg.pitch_mode == "adversarial"
        self.grl_schedule, self.grl_lambda_max = str(cfg.grl_schedule), cfg.grl_lambda_max
        self.grl_horizon = cfg.grl_warmup_updates if cfg.grl_warmup_updates > 0 else int(cfg.max_update or 0)
        uses_grl = self.spk_layer > 0 or (self.pitch_layer > 0 and self.pitch_adversarial)
        if uses_grl and self.grl_schedule != "constant" and self.grl_horizon <= 0:
            raise ValueError(f"grl_schedule={self.grl_schedule} needs model.grl_warmup_updates > 0 or "
                             f"optimization.max_update > 0")
        self.num_updates = 0
        self.grl = GradientReversal(self.current_lambda())
        dim = cfg.encoder_embed_dim

        self.spk_head: Optional[SpeakerClassifier] = None
        if self.spk_layer > 0:
            if n_speakers < 1:
                raise ValueError("model.spk_layer > 0 needs speaker labels: use task dhubert_pretraining with "
                                 "task.load_speaker=true, or set model.spk_layer=0")
            self.spk_head = SpeakerClassifier(dim, n_speakers, cfg.spk_hidden_dim, str(cfg.spk_pooling),
                                              cfg.head_dropout, cfg.spk_standardize, str(cfg.spk_unit))
        self.spk_confusion = str(cfg.spk_adversary) == "confusion"
        if self.spk_confusion and str(cfg.spk_unit) == "utterance" and str(cfg.spk_pooling) != "mean":
            raise ValueError(f"model.spk_adversary=confusion needs a parameter-free pooling: set "
                             f"model.spk_pooling=mean or model.spk_unit=frame (got spk_pooling={cfg.spk_pooling})")
        self.spk_memory: Optional[SpeakerMemory] = None
        if self.spk_head is not None and cfg.spk_memory_size > 0:
            self.spk_memory = SpeakerMemory(cfg.spk_memory_size, self.spk_head.out_dim)
        self.spk_cond: Optional[SpeakerConditioning] = None
        if cfg.spk_condition:
            if n_speakers < 1:
                raise ValueError("model.spk_condition=true needs speaker labels: use task dhubert_pretraining "
                                 "with task.load_speaker=true")
            self.spk_cond = SpeakerConditioning(n_speakers, dim)
            self.final_proj.register_forward_pre_hook(self.spk_cond.hook)
        self.pitch_head: Optional[PitchHead] = None
        self.feat2pitch_ratio = 0.0
        if self.pitch_layer > 0:
            if not getattr(task_cfg, "load_pitch", False):
                raise ValueError("model.pitch_layer > 0 needs pitch: use task dhubert_pretraining with "
                                 "task.load_pitch=true, or set model.pitch_layer=0")
            ds_rate = int(np.prod([block[0].stride[0] for block in self.feature_extractor.conv_layers]))
            self.feat2pitch_ratio = task_cfg.pitch_rate * ds_rate / task_cfg.sample_rate
            self.pitch_head = PitchHead(dim, cfg.pitch_hidden_dim, cfg.head_dropout)
        has_heads = self.spk_head is not None or self.pitch_head is not None
        self.taps = LayerTaps(self.encoder.layers, self.encoder) if has_heads else None

    @classmethod
    def build_model(cls, cfg: DHubertConfig, task) -> "DHubertModel":
        speakers = getattr(task, "speakers", None)
        return cls(cfg, task.cfg, task.dictionaries, n_speakers=len(speakers) if speakers else 0)

    def set_num_updates(self, num_updates: int) -> None:
        """Called by fairseq at every update (and on checkpoint load); drives the GRL schedule."""
        super().set_num_updates(num_updates)
        self.num_updates = int(num_updates)
        self._mask_calls = 0
        self.grl.lambda_ = self.current_lambda()

    def current_lambda(self) -> float:
        """GRL strength at the current number of updates."""
        return grl_lambda(self.grl_schedule, self.num_updates, self.grl_lambda_max, self.grl_horizon)

    def apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], target_list):
        """HuBERT's masking of x (B, T, C), seeded unless ``seeded_masks=false``; also remembers the
        (B, T) mask for the speaker adversary."""
        if self.mask_seed is None:
            x, mask_indices = super().apply_mask(x, padding_mask, target_list)
        else:
            key = self.num_updates * 4096 + self._mask_calls + (0 if self.training else 2048)
            self._mask_calls += 1
            with seeded_mask_indices(self.mask_seed, key, x.size(0)):
                x, mask_indices = super().apply_mask(x, padding_mask, target_list)
        self._mask_indices = mask_indices
        if self.spk_cond is not None:
            self.spk_cond.plan(padding_mask, mask_indices, self.skip_masked, self.skip_nomask)
        return x, mask_indices

    def speaker_frames(self, frame_pad: torch.Tensor) -> torch.Tensor:
        """Frames the adversary ignores: (B, T) bool, True = padding, plus the masked frames when
        ``spk_frames=unmasked`` (an utterance whose frames were all masked keeps them all)."""
        mask = self._mask_indices
        if not self.spk_unmasked_only or mask is None or mask.shape != frame_pad.shape:
            return frame_pad
        ignore = frame_pad | mask
        return torch.where(ignore.all(1, keepdim=True), frame_pad, ignore)

    def forward(
        self,
        source: torch.Tensor,
        target_list: Optional[List[torch.Tensor]] = None,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        spk_id: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """source: (B, S) waveform; padding_mask: (B, S) bool; spk_id: (B,) speaker ids, used by
        ``spk_condition`` only. HuBERT's outputs, plus (unless ``features_only``) ``spk_logits``
        (N, n_speakers), ``pitch_pred`` (B, T, 2) and ``grl_lambda``."""
        if self.spk_cond is not None:
            self.spk_cond.start(None if features_only else spk_id)
        try:
            if features_only or self.taps is None:
                return super().forward(source, target_list, padding_mask, mask, features_only, output_layer)
            self.taps.start()
            self._mask_indices = None
            result = super().forward(source, target_list, padding_mask, mask, features_only, output_layer)
        finally:
            if self.taps is not None:
                self.taps.stop()
            if self.spk_cond is not None:
                self.spk_cond.clear()
        frame_pad = result["padding_mask"]  # (B, T)
        n_frames = frame_pad.size(1)
        self.grl.lambda_ = self.current_lambda()
        if self.spk_head is not None:
            h = self.taps.state_after(self.spk_layer - 1)[:, :n_frames]
            emb, owner = self.spk_head.embed(h if self.spk_confusion else self.grl(h),
                                             self.speaker_frames(frame_pad))  # (N, D)
            if self.spk_confusion:  # classifier on detached vectors; encoder through a frozen classifier
                result["spk_logits"] = self.spk_head.classify(emb.detach())
                result["spk_confusion_logits"] = self.spk_head.classify_frozen(emb)
            else:
                result["spk_logits"] = self.spk_head.classify(emb)
            result["spk_embedding"] = emb
            if owner is not None:
                result["spk_owner"] = owner
            if self.spk_memory is not None and self.training and len(self.spk_memory) > 0:
                mem_feats, mem_labels = self.spk_memory.get()
                result["spk_memory_logits"] = self.spk_head.classify(mem_feats)
                result["spk_memory_labels"] = mem_labels
        if self.pitch_head is not None:
            h = self.taps.state_after(self.pitch_layer - 1)[:, :n_frames]
            result["pitch_pred"] = self.pitch_head(self.grl(h) if self.pitch_adversarial else h)
        self.taps.clear()
        self._mask_indices = None
        result["grl_lambda"] = self.grl.lambda_
        return result

    def remember_speakers(self, net_output: Dict[str, torch.Tensor], spk_id: torch.Tensor) -> None:
        """Add this batch's detached speaker embeddings (utterances or frames) with their labels
        (from ``spk_id`` (B,)) to the classifier's memory (training only; called by the criterion,
        which has the labels)."""
        if self.spk_memory is not None and self.training and "spk_embedding" in net_output:
            owner = net_output.get("spk_owner")
            self.spk_memory.push(net_output["spk_embedding"], spk_id if owner is None else spk_id[owner])

    def get_pitch_targets(self, net_output: Dict[str, torch.Tensor], pitch: torch.Tensor,
                          pitch_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Subsample pitch to model frames like HuBERT subsamples labels (frame t <- pitch frame
        floor(t * pitch_rate * stride / sample_rate)).

        Args:
            net_output: this model's output (its ``padding_mask`` (B, T) gives T).
            pitch: (B, T_p, 2) as collated by DHubertDataset.
            pitch_lengths: (B,) valid pitch frames.
        Returns:
            ``(targets (B, T, 2), valid (B, T) bool)``; ``valid`` excludes padding on either side.
        """
        frame_pad = net_output["padding_mask"]
        n_frames = frame_pad.size(1)
        if pitch.size(1) == 0:
            return pitch.new_zeros(pitch.size(0), n_frames, 2), torch.zeros_like(frame_pad)
        idx = (torch.arange(n_frames, device=pitch.device).double() * self.feat2pitch_ratio).long()
        targets = pitch[:, idx.clamp(max=pitch.size(1) - 1)]
        valid = (~frame_pad) & (idx.unsqueeze(0) < pitch_lengths.to(idx.device).unsqueeze(1))
        return targets, valid

    def remove_pretraining_modules(self) -> None:
        super().remove_pretraining_modules()
        self.spk_head = None
        self.spk_memory = None
        self.spk_cond = None
        self.pitch_head = None
        self.taps = None
