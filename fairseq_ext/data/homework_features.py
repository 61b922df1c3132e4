"""Precomputed log-Mel features in the ML2022 speaker-classification homework layout.

A data folder holds:

* ``metadata.json``: ``{"n_mels": 40, "speakers": {spk: [{"feature_path": "uttr-x.pt", "mel_len": 435}, ...]}}``
* ``mapping.json``: ``{"speaker2id": {spk: 0, ...}, "id2speaker": {"0": spk, ...}}``
* one ``torch.save``'d float tensor ``(T, n_mels)`` per utterance (paths relative to the folder);
* ``testdata.json`` (optional): ``{"n_mels": 40, "utterances": [{"feature_path": ..., "mel_len": N}, ...]}``
  for the unlabeled test utterances.

Feature files are loaded with ``torch.load(..., weights_only=True)``: a file that holds anything but
tensors is refused instead of executed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from fairseq_ext.data.utterance_dataset import Utterance, UtteranceDataset
from fairseq_ext.base.errors import UserError


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} does not exist: expected the homework layout "
                        f"(metadata.json, mapping.json, feature files)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def read_mapping(root: Path) -> List[str]:
    """Speaker names in id order from ``mapping.json`` (``speaker2id`` must be ids 0..K-1)."""
    path = root / "mapping.json"
    mapping = _read_json(path)
    if "speaker2id" not in mapping:
        raise UserError(f"{path} has no 'speaker2id' entry")
    s2i = mapping["speaker2id"]
    ids = sorted(int(v) for v in s2i.values())
    if ids != list(range(len(ids))):
        raise UserError(f"{path}: speaker2id must map the speakers to 0..{len(ids) - 1} without gaps")
    names = [""] * len(ids)
    for spk, i in s2i.items():
        names[int(i)] = spk
    i2s = mapping.get("id2speaker")
    if i2s is not None:
        for i, spk in i2s.items():
            if not (0 <= int(i) < len(names)) or names[int(i)] != spk:
                raise UserError(f"{path}: id2speaker[{i!r}] = {spk!r} disagrees with speaker2id")
    return names


def _entry(root: Path, entry: dict, where: str, label: int, metadata_path: Path) -> Utterance:
    if not isinstance(entry, dict) or "feature_path" not in entry:
        raise UserError(f"{metadata_path}: {where} has no 'feature_path'")
    rel = entry["feature_path"]
    path = rel if os.path.isabs(rel) else str(root / rel)
    if not os.path.isfile(path):
        raise UserError(f"{metadata_path}: {where}: feature file {path} does not exist")
    try:
        n = int(entry["mel_len"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{metadata_path}: {where} ({rel}) has no integer 'mel_len'") from None
    if n < 1:
        raise UserError(f"{metadata_path}: {where} ({rel}) has mel_len {n}")
    return Utterance(path, n, label, rel, f"{metadata_path}: {where}")


def read_homework_metadata(root: Path, label_index: Dict[str, int]) -> Tuple[int, List[Utterance]]:
    """``(n_mels, utterances)`` of ``metadata.json``; labels mapped through ``label_index``."""
    path = root / "metadata.json"
    meta = _read_json(path)
    if "n_mels" not in meta or "speakers" not in meta:
        raise UserError(f"{path} must have 'n_mels' and 'speakers' entries")
    items = []
    for spk, utts in meta["speakers"].items():
        if spk not in label_index:
            raise UserError(f"{path}: speaker {spk!r} is not in {root / 'mapping.json'}: "
                            f"add it to speaker2id or remove its utterances")
        if not utts:
            raise UserError(f"{path}: speaker {spk!r} has no utterances (empty class): remove it "
                            f"from metadata.json and mapping.json or add data")
        for i, entry in enumerate(utts):
            items.append(_entry(root, entry, f"speaker {spk!r} utterance #{i}", label_index[spk], path))
    if not items:
        raise UserError(f"{path} lists no utterances")
    return int(meta["n_mels"]), items


def read_testdata(path: Path) -> Tuple[Optional[int], List[Utterance]]:
    """``(n_mels, utterances)`` of ``testdata.json`` (unlabeled; ``uid`` = ``feature_path``)."""
    meta = _read_json(path)
    if "utterances" not in meta:
        raise UserError(f"{path} has no 'utterances' entry")
    items = [_entry(path.parent, e, f"utterance #{i}", -1, path) for i, e in enumerate(meta["utterances"])]
    if not items:
        raise UserError(f"{path} lists no utterances")
    return meta.get("n_mels"), items


class FeatureUtteranceDataset(UtteranceDataset):
    """Per-utterance ``(T, n_mels)`` tensor files; crops in frames.

    Args:
        items: utterances (``length`` = frames).
        n_mels: expected feature dimension; a file with another one is an error naming it.
        crop, shuffle, seed: see :class:`UtteranceDataset`.
    """

    def __init__(self, items: Sequence[Utterance], n_mels: int, crop: Optional[int] = None,
                 shuffle: bool = False, seed: int = 0):
        super().__init__(items, crop, shuffle, seed)
        self.n_mels = n_mels

    def load(self, item: Utterance, start: int, n: Optional[int]) -> torch.Tensor:
        feats = load_feature_file(item.path, self.n_mels, item.where)
        stop = None if n is None else start + n
        return feats[start:stop]


def load_feature_file(path: str, n_mels: int, where: str = "") -> torch.Tensor:
    """Load one ``(T, n_mels)`` float tensor with ``weights_only=True``, with errors naming the file."""
    ctx = f"{where}: " if where else ""
    try:
        feats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling / zip errors come in several types
        raise UserError(f"{ctx}cannot load feature file {path}: {e}") from None
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise UserError(f"{ctx}{path} holds {shape}, expected a (frames, {n_mels}) tensor")
    if feats.shape[1] != n_mels:
        raise UserError(f"{ctx}{path} has feature dimension {feats.shape[1]} but n_mels is {n_mels} "
                        f"(metadata.json): regenerate the file or fix n_mels")
    if feats.shape[0] == 0:
        raise UserError(f"{ctx}{path} has no frames")
    return feats.float()


__all__ = ["read_mapping", "read_homework_metadata", "read_testdata", "FeatureUtteranceDataset",
           "load_feature_file"]
