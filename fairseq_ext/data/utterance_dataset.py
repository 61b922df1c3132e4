"""Utterance-level classification datasets (one label per utterance) and the raw-audio inputs.

Audio inputs come in two layouts:

* a fairseq manifest ``{split}.tsv`` (root on line 1, then ``relpath<TAB>n_samples``) with a label
  file ``{split}.lbl`` holding one label per manifest line (optional ``dict.lbl.txt``: the label
  inventory, one label per line, first column);
* a folder-per-class tree ``root/{label}/*.wav`` (Speech Commands style; folders starting with
  ``_`` or ``.`` are skipped; ``validation_list.txt`` / ``testing_list.txt`` in the root, when
  present, define the valid / test splits).

:class:`UtteranceDataset` is the shared base: random crops of ``crop`` units for training, whole
utterances otherwise; batches are zero-padded with a ``padding_mask`` (True on padding).
Crops are reproducible: the offset of utterance ``i`` in epoch ``e`` depends only on
``(seed, e, i)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest

logger = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".ogg")


@dataclass(frozen=True)
class Utterance:
    """One item: file path, length (samples or frames), label index (-1 = unlabeled), id, origin."""

    path: str
    length: int
    label: int
    uid: str
    where: str = ""


class UtteranceDataset(FairseqDataset):
    """Base class: cropping, ordering, padding. Subclasses implement :meth:`load`.

    Args:
        items: the utterances.
        crop: training crop length in the item's units (samples or frames), or None for whole
            utterances (evaluation).
        shuffle: shuffle the order of batches' contents (training).
        seed: seed of the crop offsets.
    """

    def __init__(self, items: Sequence[Utterance], crop: Optional[int] = None, shuffle: bool = False,
                 seed: int = 0):
        super().__init__()
        if not items:
            raise UserError("the dataset is empty")
        self.items = list(items)
        self.crop = crop
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        lengths = np.array([it.length for it in self.items], dtype=np.int64)
        self.sizes = np.minimum(lengths, crop) if crop else lengths

    # -- FairseqDataset API ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # crops change with the epoch

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    def ordered_indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.permutation(len(self))
        else:
            order = np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="stable")]

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    def __getitem__(self, index: int) -> Dict:
        item = self.items[index]
        start, n = 0, None
        if self.crop and item.length > self.crop:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            start, n = int(rng.integers(0, item.length - self.crop + 1)), self.crop
        return {"id": index, "source": self.load(item, start, n), "label": item.label}

    def load(self, item: Utterance, start: int, n: Optional[int]) -> torch.Tensor:
        """Read ``n`` units from ``start`` (all when ``n`` is None): ``(S,)`` or ``(T, C)``."""
        raise NotImplementedError

    def collater(self, samples: List[Dict]) -> Dict:
        """Zero-pad to the longest item: ``source`` ``(B, S)`` or ``(B, T, C)``, ``padding_mask`` ``(B, T)``."""
        samples = [s for s in samples if s["source"] is not None and len(s["source"]) > 0]
        if not samples:
            return {}
        lengths = torch.tensor([len(s["source"]) for s in samples])
        first = samples[0]["source"]
        source = first.new_zeros((len(samples), int(lengths.max())) + tuple(first.shape[1:]))
        for i, s in enumerate(samples):
            source[i, : len(s["source"])] = s["source"]
        padding_mask = torch.arange(source.shape[1])[None, :] >= lengths[:, None]
        labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "nsentences": len(samples),
            "ntokens": int(lengths.sum()),
            "net_input": {"source": source, "padding_mask": padding_mask},
            "target": labels if bool((labels >= 0).all()) else None,
        }


class AudioUtteranceDataset(UtteranceDataset):
    """Raw mono audio at ``sample_rate``; crops in samples. Items' ``length`` is the sample count."""

    def __init__(self, items: Sequence[Utterance], sample_rate: int = 16000, crop: Optional[int] = None,
                 shuffle: bool = False, seed: int = 0):
        super().__init__(items, crop, shuffle, seed)
        self.sample_rate = sample_rate

    def load(self, item: Utterance, start: int, n: Optional[int]) -> torch.Tensor:
        import soundfile as sf

        ctx = f"{item.where}: " if item.where else ""
        if not os.path.isfile(item.path):
            raise UserError(f"{ctx}audio file {item.path} does not exist")
        wav, sr = sf.read(item.path, start=start, frames=-1 if n is None else n, dtype="float32", always_2d=True)
        if sr != self.sample_rate:
            raise UserError(f"{ctx}{item.path} has sample rate {sr} Hz, expected {self.sample_rate} Hz; "
                            f"resample it (e.g. sox in.wav -r {self.sample_rate} out.wav)")
        if wav.shape[1] != 1:
            raise UserError(f"{ctx}{item.path} has {wav.shape[1]} channels; convert it to mono")
        return torch.from_numpy(wav[:, 0].copy())


# --------------------------------------------------------------------------- splits


def holdout_split(labels: Sequence[int], valid_percent: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/valid split.

    Each class keeps at least one training utterance and, when ``valid_percent > 0`` and it has
    two or more, gives at least one to validation.
    Returns:
        ``(train_indices, valid_indices)``, sorted.
    """
    if not 0 <= valid_percent < 1:
        raise UserError(f"valid_percent must be in [0, 1), got {valid_percent}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    valid = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_valid = int(round(len(idx) * valid_percent))
        if valid_percent > 0 and len(idx) >= 2:
            n_valid = min(max(n_valid, 1), len(idx) - 1)
        valid.extend(idx[:n_valid].tolist())
    valid_idx = np.array(sorted(valid), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), valid_idx)
    return train_idx, valid_idx


# --------------------------------------------------------------------------- manifest + labels


def read_label_lines(path: Path, n_expected: Optional[int] = None) -> List[str]:
    """Labels, one per line (first whitespace-separated token), checked against the manifest size."""
    if not path.is_file():
        raise UserError(f"label file {path} does not exist: write one label per manifest line")
    with open(path, encoding="utf-8") as f:
        labels = [line.strip() for line in f.read().splitlines()]
    for i, lab in enumerate(labels, start=1):
        if not lab:
            raise UserError(f"{path}:{i}: empty label")
    if n_expected is not None and len(labels) != n_expected:
        raise UserError(f"{path} has {len(labels)} labels but its manifest lists {n_expected} "
                        f"utterances: write exactly one label per manifest line")
    return labels


def read_label_dict(path: Path) -> List[str]:
    """Label inventory from ``dict.lbl.txt``: first token of each non-empty line, in order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                tok = line.split()[0]
                if tok in out:
                    raise UserError(f"{path}:{i}: label {tok!r} is listed twice")
                out.append(tok)
    if not out:
        raise UserError(f"{path} lists no labels")
    return out


def manifest_items(tsv: Path, label_index: Optional[Dict[str, int]], label_ext: str = "lbl",
                   require_labels: bool = True) -> List[Utterance]:
    """Utterances of ``{split}.tsv`` with labels from ``{split}.{label_ext}`` (mapped by ``label_index``)."""
    manifest = read_manifest(tsv)
    lbl_path = tsv.with_suffix(f".{label_ext}")
    labels: List[Optional[str]] = [None] * len(manifest)
    if lbl_path.is_file() or require_labels:
        labels = read_label_lines(lbl_path, len(manifest))
    items = []
    for e, lab in zip(manifest.entries, labels):
        if lab is None:
            idx = -1
        else:
            if label_index is None or lab not in label_index:
                line = e.line - 1
                raise UserError(f"{lbl_path}:{line}: label {lab!r} is not in the label inventory "
                                f"(dict.{label_ext}.txt or the training labels)")
            idx = label_index[lab]
        items.append(Utterance(manifest.audio_path(e), e.n_samples, idx, e.relpath, f"{tsv}:{e.line}"))
    return items


# --------------------------------------------------------------------------- folder per class


def scan_class_folders(root: Path) -> Dict[str, List[str]]:
    """``{label: [relpath, ...]}`` of a folder-per-class tree (sorted; empty classes are an error)."""
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        files = sorted(str(p.relative_to(root)) for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
        if not files:
            raise UserError(f"class folder {d} holds no audio files ({', '.join(AUDIO_EXTS)}): "
                            f"remove it or add audio")
        classes[d.name] = files
    if not classes:
        raise UserError(f"{root} has no class folders: expected {root}/<label>/*.wav, "
                        f"or a manifest {root}/train.tsv with {root}/train.lbl")
    return classes


def folder_items(root: Path, label_index: Dict[str, int]) -> List[Utterance]:
    """Every audio file of the tree as an :class:`Utterance` (sample counts from the file headers)."""
    import soundfile as sf

    items = []
    for label, files in scan_class_folders(root).items():
        if label not in label_index:
            raise UserError(f"class folder {root / label} is not in the label inventory")
        for rel in files:
            path = str(root / rel)
            items.append(Utterance(path, sf.info(path).frames, label_index[label], rel, path))
    return items


def read_split_list(path: Path) -> set:
    """A Speech-Commands style split list (relative paths, one a line)."""
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


__all__ = ["Utterance", "UtteranceDataset", "AudioUtteranceDataset", "holdout_split", "read_label_lines",
           "read_label_dict", "manifest_items", "scan_class_folders", "folder_items", "read_split_list",
           "AUDIO_EXTS"]
