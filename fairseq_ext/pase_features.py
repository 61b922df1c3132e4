"""Frozen PASE feature extractor from a ``pase`` training checkpoint.

    from fairseq_ext.pase_features import build_pase_feature_extractor
    extractor = build_pase_feature_extractor("checkpoints/checkpoint_best.pt", device="cuda")
    feats, frame_lengths = extractor(wav, lengths)   # (B, T) -> (B, T // 160, emb_dim)

Only the encoder is rebuilt (from the ``model`` section of the checkpoint's config), so the
workers' classes, extra worker files and the statistics file are not needed. The extractor
stays in eval mode (BatchNorm uses its running statistics) even inside a module that is put in
training mode, and its parameters do not require gradients.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from fairseq_ext.checkpoint import register_safe_globals
from fairseq_ext.modules.pase_encoder import PaseEncoder
from fairseq_ext.base.errors import UserError


class PaseFeatureExtractor(nn.Module):
    """Frozen :class:`PaseEncoder` with a ``(B, T) -> (B, T // hop, emb_dim)`` interface.

    Attributes:
        emb_dim: feature size.
        hop: samples per frame (160: 100 frames per second at 16 kHz).
        sample_rate: expected input sample rate.
    """

    def __init__(self, encoder: PaseEncoder):
        super().__init__()
        self.encoder = encoder
        self.emb_dim = encoder.emb_dim
        self.hop = encoder.hop
        self.sample_rate = encoder.sample_rate
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "PaseFeatureExtractor":
        super().train(mode)
        self.encoder.eval()  # frozen: always use BatchNorm running statistics
        return self

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``wav`` ``(B, T)`` (or ``(T,)``), ``lengths`` ``(B,)`` valid samples (default: all) ->
        ``(features (B, T // hop, emb_dim), frame_lengths (B,))``; frames past an utterance's end are zero."""
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        padding_mask = None
        if lengths is not None:
            lengths = lengths.to(wav.device)
            padding_mask = torch.arange(wav.size(1), device=wav.device).unsqueeze(0) >= lengths.unsqueeze(1)
        else:
            lengths = torch.full((wav.size(0),), wav.size(1), dtype=torch.long, device=wav.device)
        emb, _ = self.encoder(wav, padding_mask)
        return emb.transpose(1, 2), self.encoder.frame_lengths(lengths)


def build_pase_feature_extractor(ckpt_path: str, device: str | torch.device = "cpu") -> PaseFeatureExtractor:
    """Load the encoder of a ``pase`` checkpoint as a frozen :class:`PaseFeatureExtractor` on ``device``."""
    from fairseq_ext.models.pase import encoder_from_cfg

    if not os.path.isfile(ckpt_path):
        raise UserError(f"checkpoint {ckpt_path} does not exist")
    register_safe_globals()
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg = (state.get("cfg") or {}).get("model") if isinstance(state, dict) else None
    if not cfg or cfg.get("_name") != "pase":
        name = cfg.get("_name") if cfg else "unknown"
        raise UserError(f"{ckpt_path} is not a PASE checkpoint (model: {name}); train one with "
                        f"task=pase_pretraining model=pase")
    cfg = dict(cfg)
    if not isinstance(cfg.get("sample_rate"), int):  # unresolved interpolation in old configs
        cfg["sample_rate"] = int((state["cfg"].get("task") or {}).get("sample_rate", 16000))
    encoder = encoder_from_cfg(cfg)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    encoder.load_state_dict(weights, strict=True)
    return PaseFeatureExtractor(encoder).to(device)
