"""fairseq HuBERT -> HuggingFace ``transformers`` (``HubertModel`` / ``HubertForCTC``).

The mapping is by module, not by string replacement of a name list: every parameter of the fairseq
encoder is assigned to exactly one HF parameter, and anything left over on either side is an error
(so a fairseq variant with a module HF does not have fails loudly instead of exporting half a
model). Weight norm of the positional convolution: fairseq (``torch.nn.utils.weight_norm``) stores
``weight_g`` / ``weight_v``; transformers >= 4.x with torch's parametrizations stores them as
``parametrizations.weight.original0`` (g) / ``original1`` (v).

Used by :mod:`fairseq_ext.export` (``fairseq-ext-export CKPT OUT --to hf``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from fairseq_ext.base.errors import UserError


def hf_config_dict(encoder: torch.nn.Module, activation: str = "gelu") -> Dict[str, Any]:
    """``transformers.HubertConfig`` keyword arguments read from a fairseq ``HubertModel``'s modules.

    The modules, not the training config, decide (a config field the module ignored cannot make
    the export wrong). Dropouts are 0; SpecAugment (training only) is HF's default.
    """
    extractor = encoder.feature_extractor
    convs = [block[0] for block in extractor.conv_layers]
    group_norm = isinstance(extractor.conv_layers[0][-2] if len(extractor.conv_layers[0]) > 2 else None,
                            torch.nn.GroupNorm)
    layer_norm = any(isinstance(m, torch.nn.LayerNorm) for m in extractor.modules())
    if layer_norm == group_norm:
        raise UserError("the checkpoint's CNN is neither fairseq's 'default' (GroupNorm in layer 0) nor "
                        "its 'layer_norm' mode: transformers' HubertModel has no equivalent")
    enc = encoder.encoder
    layer = enc.layers[0]
    pos = enc.pos_conv[0]
    if encoder.post_extract_proj is None:
        raise UserError("the checkpoint has no post_extract_proj (CNN channels == encoder_embed_dim): "
                        "transformers' HubertModel always projects; not supported")
    if getattr(enc, "pos_conv_depth", 1) not in (1, None) or not hasattr(pos, "weight_g"):
        raise UserError("the checkpoint's positional convolution is not fairseq HuBERT's single "
                        "weight-normed convolution: not supported by transformers' HubertModel")
    return dict(
        hidden_size=enc.embedding_dim,
        num_hidden_layers=len(enc.layers),
        num_attention_heads=layer.self_attn.num_heads,
        intermediate_size=layer.fc1.out_features,
        hidden_act=activation,
        conv_dim=[c.out_channels for c in convs],
        conv_kernel=[c.kernel_size[0] for c in convs],
        conv_stride=[c.stride[0] for c in convs],
        conv_bias=convs[0].bias is not None,
        feat_extract_norm="group" if group_norm else "layer",
        feat_extract_activation="gelu",
        num_conv_pos_embeddings=pos.kernel_size[0],
        num_conv_pos_embedding_groups=pos.groups,
        do_stable_layer_norm=bool(enc.layer_norm_first),
        feat_proj_layer_norm=True,
        layer_norm_eps=1e-5,
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0,
        # HF's SpecAugment defaults (training only); they keep ``masked_spec_embed`` (fairseq's mask_emb)
        apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10,
    )


_LAYER = {
    "self_attn.k_proj": "attention.k_proj", "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj", "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm",
}


def hf_name(name: str, feat_extract_norm: str) -> Optional[str]:
    """HF ``HubertModel`` parameter name of the fairseq ``HubertModel`` parameter ``name``, or
    None for a pretraining-only one (prediction head, label embeddings, extra heads)."""
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(\d+)\.(?:(\d+)\.)?(weight|bias)", name)
    if m:
        i, j, k, p = m.groups()
        if j == "0":
            return f"feature_extractor.conv_layers.{i}.conv.{p}"
        # fairseq blocks: (conv, dropout, norm, gelu); "layer_norm" mode wraps the norm as
        # (TransposeLast, LayerNorm, TransposeLast)
        if feat_extract_norm == "group" and i == "0" and j == "2" and k is None:
            return f"feature_extractor.conv_layers.0.layer_norm.{p}"
        if feat_extract_norm == "layer" and j == "2" and k == "1":
            return f"feature_extractor.conv_layers.{i}.layer_norm.{p}"
        return None
    fixed = {
        "layer_norm.weight": "feature_projection.layer_norm.weight",
        "layer_norm.bias": "feature_projection.layer_norm.bias",
        "post_extract_proj.weight": "feature_projection.projection.weight",
        "post_extract_proj.bias": "feature_projection.projection.bias",
        "mask_emb": "masked_spec_embed",
        "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
        "encoder.layer_norm.weight": "encoder.layer_norm.weight",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
    }
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m and m.group(2) in _LAYER:
        return f"encoder.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    return None


def hf_state_dict(encoder: torch.nn.Module, feat_extract_norm: str, prefix: str = ""
                  ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``(HF state dict, dropped fairseq names)`` of a fairseq ``HubertModel``.

    ``prefix`` is prepended to HF names (``"hubert."`` inside ``HubertForCTC``).
    """
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for name, tensor in encoder.state_dict().items():
        target = hf_name(name, feat_extract_norm)
        if target is None:
            dropped.append(name)
        else:
            out[prefix + target] = tensor.detach().clone().contiguous()
    return out, dropped


def build_hf(encoder: torch.nn.Module, activation: str = "gelu", ctc_proj: Optional[torch.nn.Linear] = None,
             vocab: Optional[List[str]] = None, blank: int = 0) -> Tuple[torch.nn.Module, List[str]]:
    """A ``transformers`` ``HubertModel`` (or ``HubertForCTC`` given ``ctc_proj``) holding the weights
    of the fairseq ``encoder``; returns ``(model, dropped fairseq parameter names)``.

    Raises:
        UserError: a parameter on either side has no counterpart.
    """
    import transformers

    kwargs = hf_config_dict(encoder, activation)
    if ctc_proj is not None:
        kwargs.update(vocab_size=ctc_proj.out_features, pad_token_id=blank, ctc_loss_reduction="sum")
        config = transformers.HubertConfig(**kwargs)
        model = transformers.HubertForCTC(config)
        prefix = "hubert."
    else:
        config = transformers.HubertConfig(**kwargs)
        model = transformers.HubertModel(config)
        prefix = ""
    state, dropped = hf_state_dict(encoder, kwargs["feat_extract_norm"], prefix)
    if ctc_proj is not None:
        state["lm_head.weight"] = ctc_proj.weight.detach().clone()
        state["lm_head.bias"] = ctc_proj.bias.detach().clone()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise UserError(f"fairseq -> transformers mapping incomplete: HF parameters without a source "
                        f"{missing[:8]}, mapped names HF does not have {extra[:8]}")
    for k, v in state.items():
        if expected[k].shape != v.shape:
            raise UserError(f"{k}: shape {tuple(v.shape)} from the checkpoint, HF expects "
                            f"{tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, dropped
