"""Usage: fairseq-ext-export CKPT OUT --to hf|s3prl|fairseq [--force] [--tolerance 1e-4] [--trust-checkpoint]

Export a HuBERT-family checkpoint of this package (fairseq ``hubert``, ``dhubert``, fine-tuned
``hubert_ctc``) for use without this package:

- ``--to hf``: OUT is a folder that ``transformers.HubertModel.from_pretrained(OUT)`` loads
  (``config.json``, ``model.safetensors``, ``preprocessor_config.json``); a fine-tuned CTC
  checkpoint becomes a ``HubertForCTC`` with ``vocab.json`` (its dictionary; blank = ``<s>``,
  index 0, stored as ``pad_token_id``).
- ``--to s3prl``: OUT is a ``.pt`` file in the format s3prl's converter writes
  (``task_cfg``, ``model_cfg``, ``model_weight``, ``dictionaries_symbols``), loadable by s3prl's
  ``hubert_local`` / ``hubert_custom`` upstream (``-u hubert_local -k OUT``) without fairseq-ext
  and with torch's ``weights_only`` loading (plain containers and tensors only).
- ``--to fairseq``: OUT is a stock fairseq ``hubert`` checkpoint (task ``hubert_pretraining``) that
  fairseq 0.12 loads without ``--user-dir``.

Pretraining-only parts (speaker / pitch heads of dhubert; for hf also HuBERT's prediction head and
label embeddings) are dropped and listed. Each export then verifies itself: it reloads OUT with the
target's own loader and compares the hidden states of every layer (the transformer input and each
layer's output, as ``hidden_states`` in HF) with the source on two generated utterances of
different lengths, printing the max abs diff; it fails above ``--tolerance``. See docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fairseq_ext.base.atomic import atomic_output, check_writable_dir
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("fairseq_ext.export")

TARGETS = ("hf", "s3prl", "fairseq")
VERIFY_LENGTHS = (16000, 23456)
"""Samples of the two generated utterances every export is checked on (1 s and ~1.47 s)."""
PRETRAINING_ONLY = ("final_proj.", "label_embs_concat", "spk_", "pitch_head.", "grl.")


# ---------------------------------------------------------------------------- source


class Source:
    """A loaded HuBERT-family checkpoint: the fairseq encoder (a ``HubertModel``), its configs, and
    for a fine-tuned CTC model the output projection and target dictionary."""

    def __init__(self, ckpt: str, trusted: bool = False) -> None:
        from fairseq.models.hubert import HubertModel

        from fairseq_ext.checkpoint import CheckpointError, load_model

        try:
            model, cfg, task = load_model(ckpt, trusted=trusted)
        except (FileNotFoundError, CheckpointError) as e:
            raise UserError(str(e)) from None
        self.path = ckpt
        self.cfg, self.task = cfg, task
        name = str(cfg.model.get("_name", type(model).__name__))
        self.ctc_proj = None
        self.vocab: Optional[List[str]] = None
        if hasattr(model, "w2v_encoder"):  # fine-tuned hubert_ctc
            self.encoder = model.w2v_encoder.w2v_model
            self.ctc_proj = getattr(model.w2v_encoder, "proj", None)
            if self.ctc_proj is not None and getattr(task, "target_dictionary", None) is not None:
                self.vocab = list(task.target_dictionary.symbols)
            self.model_cfg = dict(cfg.model.w2v_args.model)
            self.task_cfg = dict(cfg.model.w2v_args.task)
            self.kind = "hubert_ctc"
        elif isinstance(model, HubertModel):
            self.encoder = model
            self.model_cfg, self.task_cfg = dict(cfg.model), dict(cfg.task)
            self.kind = name
        else:
            raise UserError(
                f"{ckpt} holds a {name!r} model ({type(model).__name__}): fairseq-ext-export converts "
                f"HuBERT-family checkpoints only (hubert, dhubert, fine-tuned hubert_ctc), to "
                f"{', '.join(TARGETS)}. PASE and speaker-head models have no HuBERT encoder to export; "
                f"use their checkpoints with fairseq-ext (fairseq-hydra-train --user-dir fairseq_ext)")
        self.encoder.eval()
        self.normalize = bool(self.task_cfg.get("normalize", False))
        self.activation = str(self.model_cfg.get("activation_fn", "gelu"))


def stock_configs(src: Source) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(model_cfg, task_cfg)`` as plain dicts holding only fields of fairseq's stock ``HubertConfig``
    / ``HubertPretrainingConfig``, named ``hubert`` / ``hubert_pretraining``."""
    from fairseq.models.hubert import HubertConfig
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    def plain(d: Dict[str, Any], dc, name: str) -> Dict[str, Any]:
        keep = set(dc.__dataclass_fields__)
        out = {k: (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v)
               for k, v in d.items() if k in keep}
        out["_name"] = name
        return out

    model_cfg = plain(src.model_cfg, HubertConfig, "hubert")
    task_cfg = plain(src.task_cfg, HubertPretrainingConfig, "hubert_pretraining")
    task_cfg["fine_tuning"] = False
    return model_cfg, task_cfg


def stock_state(src: Source) -> Tuple[Dict[str, Any], List[str]]:
    """The encoder's weights with the keys of fairseq's stock ``HubertModel`` (prediction head
    included: stock fairseq and s3prl load strictly), and the dropped names."""
    keep: Dict[str, Any] = {}
    dropped: List[str] = []
    for k, v in src.encoder.state_dict().items():
        if k.startswith(("spk_", "pitch_head.", "grl.")):
            dropped.append(k)
        else:
            keep[k] = v.detach().clone()
    return keep, dropped


def dictionaries(src: Source) -> List[Any]:
    """The label dictionaries the encoder was built with (HuBERT's prediction head sizes)."""
    dicts = getattr(src.task, "dictionaries", None)
    if not dicts:
        n = src.encoder.label_embs_concat.size(0)
        from fairseq.data import Dictionary

        d = Dictionary()
        for i in range(n - len(d)):
            d.add_symbol(str(i))
        dicts = [d]
    return list(dicts)


# ---------------------------------------------------------------------------- hidden states


def fairseq_layer_states(model, wav):
    """Every layer's hidden state of a fairseq ``HubertModel`` for ``wav`` (1, S): a list of
    ``num_layers + 2`` tensors (T, C): the transformer input (after the positional convolution),
    each layer's output (``extract_features(output_layer=L)``), then the final output
    (``extract_features()``: after the encoder's last layer norm when the model normalises first)."""
    import torch

    states: List[Any] = []
    hooks = [model.encoder.layers[0].register_forward_pre_hook(lambda m, a: states.append(a[0]))]
    hooks += [layer.register_forward_hook(lambda m, a, out: states.append(out[0]))
              for layer in model.encoder.layers]
    try:
        with torch.no_grad():
            x, _ = model.extract_features(wav, padding_mask=None, mask=False)
    finally:
        for h in hooks:
            h.remove()
    T = x.size(1)
    return [s[:T, 0] for s in states] + [x[0]]  # (T_padded, 1, C) -> (T, C)


def hf_layer_states(model, wav):
    """``hidden_states`` (transformer input, each layer's output) then the final output of a
    transformers ``HubertModel`` / ``HubertForCTC`` for ``wav`` (1, S), as :func:`fairseq_layer_states`."""
    import torch

    hubert = getattr(model, "hubert", model)
    with torch.no_grad():
        out = hubert(wav, output_hidden_states=True)
    return [h[0] for h in out.hidden_states] + [out.last_hidden_state[0]]


def test_utterances(normalize: bool):
    """Two seeded noise-plus-tone utterances (1, S) of :data:`VERIFY_LENGTHS` samples."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    wavs = []
    for n in VERIFY_LENGTHS:
        t = torch.arange(n) / 16000.0
        w = 0.1 * torch.randn(n, generator=g) + 0.3 * torch.sin(2 * torch.pi * 220.0 * t)
        wavs.append(F.layer_norm(w, w.shape)[None] if normalize else w[None])
    return wavs


def compare(src: Source, states_fn: Callable[[Any], List[Any]]) -> List[float]:
    """Max abs difference over every layer and frame, per test utterance."""
    diffs = []
    for wav in test_utterances(src.normalize):
        ref = fairseq_layer_states(src.encoder, wav)
        got = states_fn(wav)
        if len(ref) != len(got):
            raise UserError(f"verification: {len(got)} hidden states, the source has {len(ref)}")
        diffs.append(max(float((a - b).abs().max()) for a, b in zip(ref, got)))
    return diffs


# ---------------------------------------------------------------------------- targets


def export_hf(src: Source, out: Path) -> Tuple[List[str], Callable]:
    """Write the HF folder into ``out``; return the dropped names and a verifier."""
    from fairseq_ext.export_hf import build_hf

    model, dropped = build_hf(src.encoder, src.activation, src.ctc_proj, src.vocab)
    model.save_pretrained(str(out), safe_serialization=True)
    feat = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "padding_side": "right", "do_normalize": src.normalize,
        "return_attention_mask": model.config.feat_extract_norm == "layer",
    }
    (out / "preprocessor_config.json").write_text(json.dumps(feat, indent=2) + "\n")
    if src.vocab is not None:
        (out / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(src.vocab)}, indent=2) + "\n")

    def verify() -> List[float]:
        import transformers

        cls = transformers.HubertForCTC if src.ctc_proj is not None else transformers.HubertModel
        loaded = cls.from_pretrained(str(out)).eval()
        return compare(src, lambda wav: hf_layer_states(loaded, wav))

    return dropped, verify


def s3prl_state(src: Source) -> Tuple[Dict[str, Any], List[str]]:
    """The dict s3prl's ``load_and_convert_fairseq_ckpt`` writes, for the encoder only."""
    model_cfg, task_cfg = stock_configs(src)
    weights, dropped = stock_state(src)
    symbols = [list(d.symbols) for d in dictionaries(src)]
    return {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": weights,
            "dictionaries_symbols": symbols}, dropped


def build_stock_hubert(model_cfg: Dict[str, Any], task_cfg: Dict[str, Any], dicts: Sequence[Any]):
    """fairseq's stock ``HubertModel`` from plain config dicts (what s3prl's loader does with its copy)."""
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    def make(dc, d):
        return dc(**{k: v for k, v in d.items() if k in dc.__dataclass_fields__})

    return HubertModel(make(HubertConfig, model_cfg), make(HubertPretrainingConfig, task_cfg), list(dicts))


def export_s3prl(src: Source, out: Path) -> Tuple[List[str], Callable]:
    import torch

    state, dropped = s3prl_state(src)
    with atomic_output(out, "wb") as f:
        torch.save(state, f)

    def verify() -> List[float]:
        loaded = torch.load(out, map_location="cpu", weights_only=True)  # s3prl's plain torch.load
        model = build_stock_hubert(loaded["model_cfg"], loaded["task_cfg"], loaded["dictionaries_symbols"])
        model.load_state_dict(loaded["model_weight"], strict=True)
        return compare(src, lambda wav: fairseq_layer_states(model.eval(), wav))

    return dropped, verify


def fairseq_state(src: Source) -> Tuple[Dict[str, Any], List[str]]:
    """A checkpoint dict in ``fairseq-hydra-train``'s layout naming only stock fairseq classes."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    model_cfg, task_cfg = stock_configs(src)
    weights, dropped = stock_state(src)
    cfg = OmegaConf.to_container(OmegaConf.structured(FairseqConfig()), resolve=True, enum_to_str=True)
    cfg["common"]["user_dir"] = None
    cfg["common"]["cpu"] = True
    cfg["model"], cfg["task"] = model_cfg, task_cfg
    cfg["criterion"] = {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                        "loss_weights": [10.0]}
    state = {
        "args": None, "cfg": cfg, "model": weights, "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": {"dictionaries": dictionaries(src)},
        "extra_state": {"exported_from": os.path.abspath(src.path), "exported_kind": src.kind},
        "last_optimizer_state": None,
    }
    return state, dropped


def export_fairseq(src: Source, out: Path) -> Tuple[List[str], Callable]:
    import torch

    state, dropped = fairseq_state(src)
    with atomic_output(out, "wb") as f:
        torch.save(state, f)

    def verify() -> List[float]:
        from fairseq import checkpoint_utils

        from fairseq_ext.checkpoint import register_safe_globals

        register_safe_globals()  # Dictionary; stock users need the same on torch >= 2.6 (docs/export.md)
        models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(out)])
        if cfg.model._name != "hubert" or cfg.task._name != "hubert_pretraining":
            raise UserError(f"verification: {out} names {cfg.model._name}/{cfg.task._name}")
        return compare(src, lambda wav: fairseq_layer_states(models[0].eval(), wav))

    return dropped, verify


EXPORTERS = {"hf": export_hf, "s3prl": export_s3prl, "fairseq": export_fairseq}


# ---------------------------------------------------------------------------- command


def check_output(out: Path, to: str, force: bool) -> None:
    """Fail before any work if ``out`` cannot be written (or exists, without ``--force``)."""
    if out.exists() and not force:
        raise UserError(f"{out} exists: remove it or pass --force")
    if to == "hf" and out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --to hf writes a folder")
    if to != "hf" and out.is_dir():
        raise UserError(f"{out} is a folder; --to {to} writes a file (e.g. {out}/model.pt)")
    check_writable_dir(out.parent)


def export(ckpt: str, out: str, to: str, tolerance: float = 1e-4, force: bool = False,
           trusted: bool = False) -> Dict[str, Any]:
    """Export ``ckpt`` to ``out`` for ``to`` (hf | s3prl | fairseq), verify it, return a summary
    ``{"dropped": [...], "max_abs_diff": [per utterance], "kind": ...}``."""
    if to not in EXPORTERS:
        raise UserError(f"--to {to}: choose one of {', '.join(TARGETS)}")
    out_path = Path(out)
    check_output(out_path, to, force)
    if to == "hf":
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise UserError("--to hf needs the transformers package: pip install transformers "
                            "(pin your torch: pip install transformers \"torch==<installed version>\")") from None
    src = Source(ckpt, trusted=trusted)
    logger.info("%s: %s, %d layers of %d dims", ckpt, src.kind, len(src.encoder.encoder.layers),
                src.encoder.encoder.embedding_dim)
    if to == "hf":  # write the folder next to OUT, then move it into place
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
        try:
            dropped, verify = export_hf(src, tmp)
            diffs = verify()
            check_diffs(diffs, tolerance)
            if out_path.exists():
                shutil.rmtree(out_path)
            os.replace(tmp, out_path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    else:
        dropped, verify = EXPORTERS[to](src, out_path)
        try:
            diffs = verify()
            check_diffs(diffs, tolerance)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
    return {"kind": src.kind, "dropped": dropped, "max_abs_diff": diffs}


def check_diffs(diffs: List[float], tolerance: float) -> None:
    if max(diffs) > tolerance:
        raise UserError(f"verification failed: hidden states differ by up to {max(diffs):.3g} "
                        f"(> --tolerance {tolerance:g}); nothing was written")


def dropped_summary(names: List[str]) -> str:
    """``spk_head (6 tensors), final_proj (2 tensors)``: dropped names grouped by top module."""
    groups: Dict[str, int] = {}
    for n in names:
        top = n.split(".")[0] if not n.startswith("feature_extractor") else n
        groups[top] = groups.get(top, 0) + 1
    return ", ".join(f"{k} ({v} tensor{'s' if v > 1 else ''})" for k, v in groups.items()) or "nothing"


def main(ckpt: str, out: str, to: str, tolerance: float, force: bool, trust_checkpoint: bool) -> None:
    result = export(ckpt, out, to, tolerance=tolerance, force=force, trusted=trust_checkpoint)
    print(f"exported {ckpt} ({result['kind']}) -> {out} (--to {to})")
    print(f"dropped (pretraining-only): {dropped_summary(result['dropped'])}")
    lens = ", ".join(f"{n} samples: {d:.3g}" for n, d in zip(VERIFY_LENGTHS, result["max_abs_diff"]))
    print(f"verified: max abs diff of every layer's hidden states vs the source ({lens})")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseq-ext-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="HuBERT-family checkpoint (hubert, dhubert, hubert_ctc)")
    p.add_argument("out", help="output: a folder for --to hf, a .pt file otherwise")
    p.add_argument("--to", required=True, choices=TARGETS, help="target framework")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted max abs diff of hidden states in the self-check (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle everything in CKPT (only for files from a trusted source)")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
