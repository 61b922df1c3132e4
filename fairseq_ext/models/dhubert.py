"""Model ``dhubert``: HuBERT with a speaker adversary and a pitch head.

- Speaker adversary: output of transformer layer ``spk_layer`` -> every valid frame on its own
  (``spk_unit=frame``), or a masked pooling over valid frames (all of them, or only the unmasked
  ones: ``spk_frames``) with ``spk_unit=utterance`` -> running standardisation -> MLP ->
  ``n_speakers`` logits (fairseq_ext.modules.speaker_classifier); the MLP also replays a memory of
  recent embeddings, which the model fills itself from the speaker ids it is given. The head
  learns to identify the speaker; the encoder below ``spk_layer`` learns to hide it, by making a
  frozen copy of the classifier output uniform probabilities (``spk_adversary=confusion``) or
  through a gradient-reversal layer (``reverse``: it receives ``-w`` times the head's gradient).
- Speaker conditioning (``spk_condition``): the prediction head gets a learned embedding of each
  frame's true speaker (fairseq_ext.modules.speaker_conditioning).
- Pitch head: output of layer ``pitch_layer`` -> MLP -> per frame [log-F0 estimate, voicing logit].
  ``pitch_mode=auxiliary`` trains the encoder to keep pitch there; ``adversarial`` puts the head
  behind the GRL too (the encoder learns to remove pitch).
- The adversary weight ``w`` follows ``adv_schedule`` (constant | dann | linear, see
  fairseq_ext.modules.grl) of the number of updates, which fairseq passes in through
  ``set_num_updates``; it is the GRL's strength and the weight of the confusion loss.

``forward`` runs HuBERT's steps itself so that it reads the heads' layers from the encoder's
``layer_results`` (one encoder pass) and passes speakers to the prediction head explicitly;
``extract_features`` is HuBERT's, so fairseq's feature dumping works on these checkpoints.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from omegaconf import II

from fairseq_ext.modules.grl import ADV_SCHEDULES, GradientReversal, scheduled_weight
from fairseq_ext.modules.layer_states import layers_run, state_after
from fairseq_ext.modules.pitch_head import PitchHead
from fairseq_ext.modules.pooling import POOLING_CHOICES
from fairseq_ext.modules.seeded_masks import seeded_apply_mask
from fairseq_ext.modules.speaker_classifier import SPK_UNITS, SpeakerClassifier
from fairseq_ext.modules.speaker_conditioning import SpeakerConditioning
from fairseq_ext.modules.speaker_memory import SpeakerMemory

logger = logging.getLogger(__name__)

PITCH_MODES = ("auxiliary", "adversarial")
SPK_FRAMES = ("all", "unmasked")
SPK_ADVERSARIES = ("reverse", "confusion")
# deprecated key -> new key (checkpoints and configs written before the rename still load)
RENAMED_KEYS = {"grl_schedule": "adv_schedule", "grl_lambda_max": "adv_weight",
                "grl_warmup_updates": "adv_warmup_updates"}


@dataclass
class DHubertConfig(HubertConfig):
    spk_layer: int = field(
        default=6, metadata={"help": "1-based transformer layer feeding the speaker adversary; 0 = no speaker head"})
    spk_pooling: ChoiceEnum(POOLING_CHOICES) = field(  # type: ignore[valid-type]
        default="mean", metadata={"help": "pooling of the speaker adversary: mean, self_attention, attentive "
                                          "(MLP-scored mean) or attentive_stats (weighted mean and std)"})
    spk_unit: ChoiceEnum(SPK_UNITS) = field(  # type: ignore[valid-type]
        default="frame", metadata={"help": "what the speaker adversary classifies: frame = every valid frame "
                                           "on its own (many more examples per update, and the adversary's "
                                           "gradient reaches every frame; measured best, docs/dhubert.md), "
                                           "utterance = one pooled vector per utterance (spk_pooling)"})
    spk_adversary: ChoiceEnum(SPK_ADVERSARIES) = field(  # type: ignore[valid-type]
        default="confusion", metadata={"help": "how the encoder fights the speaker classifier: reverse = gradient "
                                               "reversal (the encoder maximises adv_weight x the classifier's "
                                               "cross-entropy); confusion = the encoder minimises adv_weight x the "
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
        default=4096, metadata={"help": "the speaker classifier also trains, at every update, on the detached "
                                        "embeddings of the last N training frames (utterances, with "
                                        "spk_unit=utterance; the encoder gets no gradient from them); 0 = only "
                                        "the current batch"})
    spk_condition: bool = field(
        default=True, metadata={"help": "speaker-conditioned masked prediction (ContentVec): add a learned "
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
    adv_schedule: ChoiceEnum(ADV_SCHEDULES) = field(  # type: ignore[valid-type]
        default="dann", metadata={"help": "schedule of the adversary weight: constant, dann (2/(1+exp(-10p))-1), "
                                          "linear"})
    adv_weight: float = field(
        default=1.0, metadata={"help": "final adversary weight w: the GRL strength (spk_adversary=reverse, "
                                       "pitch_mode=adversarial) and the weight of the confusion loss"})
    adv_warmup_updates: int = field(
        default=0, metadata={"help": "updates over which dann/linear ramp up (p = updates / this); "
                                     "0 = optimization.max_update"})
    grl_schedule: Optional[str] = field(default=None, metadata={"help": "deprecated: use adv_schedule"})
    grl_lambda_max: Optional[float] = field(default=None, metadata={"help": "deprecated: use adv_weight"})
    grl_warmup_updates: Optional[int] = field(default=None, metadata={"help": "deprecated: use adv_warmup_updates"})
    seeded_masks: bool = field(
        default=True, metadata={"help": "draw HuBERT's span masks from generators seeded by (mask_seed, update, "
                                        "call, row, rank), so reruns mask the same frames (fairseq 0.12.3's "
                                        "masks are unseeded); false = fairseq's behaviour"})
    mask_seed: int = field(default=II("common.seed"), metadata={"help": "seed of the span masks (seeded_masks)"})
    max_update: int = field(
        default=II("optimization.max_update"), metadata={"help": "training length; the adversary ramp's default length"})


def adversary_settings(cfg: Any) -> Tuple[str, float, int]:
    """``(adv_schedule, adv_weight, adv_warmup_updates)`` of a model config; a deprecated
    ``grl_*`` key that is set (a config or checkpoint from before the rename) wins, with a warning."""
    values = {new: getattr(cfg, new) for new in RENAMED_KEYS.values()}
    for old, new in RENAMED_KEYS.items():
        value = getattr(cfg, old, None)
        if value is not None:
            logger.warning("model.%s is deprecated: use model.%s (taking %s=%s)", old, new, new, value)
            values[new] = value
    schedule = str(values["adv_schedule"])
    if schedule not in ADV_SCHEDULES:
        raise ValueError(f"model.adv_schedule={schedule!r}: choose one of {', '.join(ADV_SCHEDULES)}")
    return schedule, float(values["adv_weight"]), int(values["adv_warmup_updates"])


@register_model("dhubert", dataclass=DHubertConfig)
class DHubertModel(HubertModel):
    """HuBERT + speaker adversary + pitch head; outputs add ``spk_logits`` (N, n_speakers) and
    ``spk_embedding`` (N, D) (N = the valid frames, whose utterances ``spk_owner`` (N,) gives, or
    with ``spk_unit=utterance`` the B utterances), in training with a filled memory
    ``spk_memory_logits`` (M, n_speakers) and ``spk_memory_labels`` (M,), with
    ``spk_adversary=confusion`` ``spk_confusion_logits`` (N, n_speakers), ``pitch_pred`` (B, T, 2)
    and ``adv_weight`` (the scheduled adversary weight) to HuBERT's."""

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
        self.pitch_adversarial = cfg.pitch_mode == "adversarial"
        self.adv_schedule, self.adv_weight, warmup = adversary_settings(cfg)
        self.adv_horizon = warmup if warmup > 0 else int(cfg.max_update or 0)
        uses_adversary = self.spk_layer > 0 or (self.pitch_layer > 0 and self.pitch_adversarial)
        if uses_adversary and self.adv_schedule != "constant" and self.adv_horizon <= 0:
            raise ValueError(f"adv_schedule={self.adv_schedule} needs model.adv_warmup_updates > 0 or "
                             f"optimization.max_update > 0")
        self.num_updates = 0
        self.grl = GradientReversal(self.current_weight())
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
                                 "with task.load_speaker=true, or set model.spk_condition=false")
            self.spk_cond = SpeakerConditioning(n_speakers, dim)
        self.pitch_head: Optional[PitchHead] = None
        self.feat2pitch_ratio = 0.0
        if self.pitch_layer > 0:
            if not getattr(task_cfg, "load_pitch", False):
                raise ValueError("model.pitch_layer > 0 needs pitch: use task dhubert_pretraining with "
                                 "task.load_pitch=true, or set model.pitch_layer=0")
            ds_rate = int(np.prod([block[0].stride[0] for block in self.feature_extractor.conv_layers]))
            self.feat2pitch_ratio = task_cfg.pitch_rate * ds_rate / task_cfg.sample_rate
            self.pitch_head = PitchHead(dim, cfg.pitch_hidden_dim, cfg.head_dropout)

    @classmethod
    def build_model(cls, cfg: DHubertConfig, task) -> "DHubertModel":
        speakers = getattr(task, "speakers", None)
        return cls(cfg, task.cfg, task.dictionaries, n_speakers=len(speakers) if speakers else 0)

    def set_num_updates(self, num_updates: int) -> None:
        """Called by fairseq at every update (and on checkpoint load); drives the adversary schedule."""
        super().set_num_updates(num_updates)
        self.num_updates = int(num_updates)
        self._mask_calls = 0
        self.grl.lambda_ = self.current_weight()

    def current_weight(self) -> float:
        """Adversary weight (GRL strength) at the current number of updates."""
        return scheduled_weight(self.adv_schedule, self.num_updates, self.adv_weight, self.adv_horizon)

    def apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], target_list
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """HuBERT's masking of x (B, T, C); unless ``seeded_masks=false`` the masks are seeded by
        ``(mask_seed, key, row)`` with key = update x 4096 + call (+ 2048 in evaluation).
        Returns ``(x, mask_indices (B, T) bool)``."""
        if self.mask_seed is None:
            return super().apply_mask(x, padding_mask, target_list)
        key = self.num_updates * 4096 + self._mask_calls + (0 if self.training else 2048)
        self._mask_calls += 1
        return seeded_apply_mask(self, x, padding_mask, self.mask_seed, key)

    def speaker_frames(self, frame_pad: torch.Tensor, mask_indices: Optional[torch.Tensor]) -> torch.Tensor:
        """Frames the adversary ignores: (B, T) bool, True = padding, plus the masked frames
        (``mask_indices`` (B, T)) when ``spk_frames=unmasked`` (an utterance whose frames were
        all masked keeps them all)."""
        if not self.spk_unmasked_only or mask_indices is None or mask_indices.shape != frame_pad.shape:
            return frame_pad
        ignore = frame_pad | mask_indices
        return torch.where(ignore.all(1, keepdim=True), frame_pad, ignore)

    def compute_logits(self, x: torch.Tensor, frame_pad: torch.Tensor, mask_indices: Optional[torch.Tensor],
                       target_list: List[torch.Tensor], spk_id: Optional[torch.Tensor] = None
                       ) -> Tuple[List[Optional[torch.Tensor]], List[Optional[torch.Tensor]]]:
        """HuBERT's prediction logits for the masked and the unmasked valid frames.

        Args:
            x: encoder output (B, T, C); frame_pad, mask_indices: (B, T) bool (True = padding /
                masked; mask_indices None = nothing masked).
            target_list: per label set, (B, T) long.
            spk_id: (B,) speaker ids; with ``spk_condition`` each selected frame gets its
                utterance's speaker embedding before ``final_proj`` (None = no conditioning).
        Returns:
            ``(logit_m_list, logit_u_list)``: per label set (S, 1 + K) logits whose target is column
            0 (S = selected frames), or None where ``skip_masked``/``skip_nomask``.
        """
        masked = torch.zeros_like(frame_pad) if mask_indices is None else mask_indices
        label_embs_list = self.label_embs_concat.split(self.num_classes, 0)
        results = []
        for selected, skip in ((~frame_pad & masked, self.skip_masked), (~frame_pad & ~masked, self.skip_nomask)):
            if skip:
                results.append([None for _ in target_list])
                continue
            rows = x[selected]
            if self.spk_cond is not None and spk_id is not None:
                rows = self.spk_cond(rows, spk_id[selected.nonzero()[:, 0]])
            proj = self.final_proj(rows)
            projs = proj.chunk(len(target_list), dim=-1) if self.untie_final_proj else [proj] * len(target_list)
            logits = []
            for p, t, label_embs in zip(projs, target_list, label_embs_list):
                pos = torch.index_select(label_embs, 0, t[selected].long())
                negs = label_embs.unsqueeze(1).expand(-1, p.size(0), -1)
                if self.target_glu:
                    pos, negs = self.target_glu(pos), self.target_glu(negs)
                logits.append(self.compute_nce(p, pos, negs))
            results.append(logits)
        return results[0], results[1]

    def forward(
        self,
        source: torch.Tensor,
        target_list: Optional[List[torch.Tensor]] = None,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        spk_id: Optional[torch.Tensor] = None,
    ) -> Dict[str, Any]:
        """source: (B, S) waveform; padding_mask: (B, S) bool; target_list: per label set (B, T_l)
        long; spk_id: (B,) speaker ids (speaker conditioning, and in training the adversary's
        memory). ``features_only``: HuBERT's ``{"x", "padding_mask", "features"}``. Otherwise
        HuBERT's outputs (``logit_m_list``, ``logit_u_list``, ``padding_mask`` (B, T),
        ``features_pen``) plus the heads' (see the class)."""
        if features_only:
            return super().forward(source, target_list, padding_mask, mask, features_only, output_layer)
        # HuBERT's steps (fairseq 0.12.3 HubertModel.forward), keeping the encoder's layer results
        features = self.forward_features(source)  # (B, C, T)
        if target_list is not None:
            features, target_list = self.forward_targets(features, target_list)
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))  # (B, T, C)
        unmasked_features = features.clone()
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        self.dropout_features(unmasked_features)  # unused, as in HuBERT; kept for the same random draws
        x, mask_indices = self.apply_mask(features, padding_mask, target_list) if mask else (features, None)
        np_state = np.random.get_state() if self.encoder.layerdrop > 0 else None
        stop_after = None if output_layer is None else output_layer - 1
        x, layer_results = self.encoder(x, padding_mask=padding_mask, layer=stop_after)  # (B, T, C)
        frame_pad = padding_mask if padding_mask is not None else torch.zeros(x.shape[:2], dtype=torch.bool,
                                                                                device=x.device)
        logit_m_list, logit_u_list = self.compute_logits(x, frame_pad, mask_indices, target_list, spk_id)
        result = {"logit_m_list": logit_m_list, "logit_u_list": logit_u_list, "padding_mask": frame_pad,
                  "features_pen": features_pen}
        if self.spk_head is None and self.pitch_head is None:
            return result
        ran = layers_run(len(self.encoder.layers), self.encoder.layerdrop, self.encoder.training, np_state,
                         stop_after)
        n_frames = frame_pad.size(1)
        self.grl.lambda_ = self.current_weight()
        if self.spk_head is not None:
            h = state_after(layer_results, ran, self.spk_layer - 1, x)[:, :n_frames]
            result.update(self.speaker_outputs(h, self.speaker_frames(frame_pad, mask_indices), spk_id))
        if self.pitch_head is not None:
            h = state_after(layer_results, ran, self.pitch_layer - 1, x)[:, :n_frames]
            result["pitch_pred"] = self.pitch_head(self.grl(h) if self.pitch_adversarial else h)
        result["adv_weight"] = self.grl.lambda_
        return result

    def speaker_outputs(self, h: torch.Tensor, ignore: torch.Tensor, spk_id: Optional[torch.Tensor]
                        ) -> Dict[str, torch.Tensor]:
        """The speaker adversary on layer states h (B, T, C), ignoring frames where ``ignore``
        (B, T) is True. In training, with ``spk_id`` (B,) given, the batch's detached embeddings
        then join the memory (after the memory's logits were taken)."""
        out: Dict[str, torch.Tensor] = {}
        emb, owner = self.spk_head.embed(h if self.spk_confusion else self.grl(h), ignore)  # (N, D)
        if self.spk_confusion:  # classifier on detached vectors; encoder through a frozen classifier
            out["spk_logits"] = self.spk_head.classify(emb.detach())
            out["spk_confusion_logits"] = self.spk_head.classify_frozen(emb)
        else:
            out["spk_logits"] = self.spk_head.classify(emb)
        out["spk_embedding"] = emb
        if owner is not None:
            out["spk_owner"] = owner
        if self.spk_memory is not None and self.training:
            if len(self.spk_memory) > 0:
                mem_feats, mem_labels = self.spk_memory.get()
                out["spk_memory_logits"] = self.spk_head.classify(mem_feats)
                out["spk_memory_labels"] = mem_labels
            if spk_id is not None:
                self.spk_memory.push(emb, spk_id if owner is None else spk_id[owner])
        return out

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
