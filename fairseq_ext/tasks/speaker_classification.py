"""``speaker_classification``: one label per utterance (speaker identification, keyword spotting, ...).

Inputs (``task.input_type``):

* ``audio``: raw audio, features computed by the model's trainable log-Mel front-end. ``task.data``
  is a folder with fairseq manifests ``{split}.tsv`` and labels ``{split}.lbl`` (one per manifest
  line; optional inventory ``dict.lbl.txt``), or a folder-per-class tree ``{data}/{label}/*.wav``.
* ``homework``: precomputed log-Mels in the ML2022 homework layout (``metadata.json``,
  ``mapping.json``, one ``(T, n_mels)`` tensor file per utterance, ``testdata.json``).
* ``ssl``: raw audio through a frozen upstream inside the model (``model.ssl_checkpoint``: a checkpoint
  of any registered upstream kind, HuBERT, dhubert, PASE / PASE+, a speaker/KWS front-end, or a name
  such as ``logmel``; see :mod:`fairseq_ext.encoder`). Set ``samples_per_frame`` to the upstream's
  frame shift (160 for PASE and log-Mels) for crops of exactly ``segment_len`` frames.

Splits: ``train`` gets random crops of ``segment_len`` frames (``segment_len * samples_per_frame``
samples for audio), every other split whole utterances. ``valid`` is ``{data}/valid.tsv`` (or the
tree's ``validation_list.txt``) when present, otherwise a seeded, stratified ``valid_percent``
hold-out of ``train`` (which then loses those utterances). ``test`` is ``test.tsv``,
``testing_list.txt``, or ``testdata.json`` (homework), and may be unlabeled.

The label inventory (and, for homework features, ``n_mels``) is task state: it is saved in every
checkpoint, so inference does not need the training data.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import MISSING

from fairseq_ext.data.homework_features import (
    FeatureUtteranceDataset, read_homework_metadata, read_mapping, read_testdata,
)
from fairseq_ext.data.utterance_dataset import (
    AudioUtteranceDataset, Utterance, UtteranceDataset, folder_items, holdout_split, manifest_items,
    read_label_dict, read_label_lines, read_split_list, scan_class_folders,
)
from fairseq_ext.base.errors import UserError

logger = logging.getLogger(__name__)

INPUT_CHOICES = ChoiceEnum(["audio", "homework", "ssl"])
DEFAULT_SAMPLES_PER_FRAME = {"audio": 160, "ssl": 320, "homework": 1}


@dataclass
class SpeakerClassificationConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={
        "help": "folder with {split}.tsv + {split}.lbl, a folder-per-class tree, or the homework layout"})
    input_type: INPUT_CHOICES = field(  # type: ignore[valid-type]
        default="audio", metadata={"help": "audio (model front-end), homework (precomputed log-Mels), "
                                           "ssl (a frozen upstream in the model: model.ssl_checkpoint)"})
    label_ext: str = field(default="lbl", metadata={"help": "label file extension: {split}.{label_ext}"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate (Hz)"})
    segment_len: int = field(default=128, metadata={"help": "training crop length in frames"})
    samples_per_frame: int = field(default=0, metadata={
        "help": "audio samples per frame for crops; 0 = 160 (front-end hop) for audio, 320 for ssl "
                "(HuBERT; set 160 for a PASE or log-Mel upstream)"})
    valid_percent: float = field(default=0.1, metadata={
        "help": "share of each class held out of train as valid when there is no valid split on disk"})
    split_seed: int = field(default=0, metadata={"help": "seed of the hold-out split"})
    train_split: str = field(default="train", metadata={"help": "split that is cropped and shuffled"})
    valid_split: str = field(default="valid", metadata={"help": "split name of the hold-out"})


@register_task("speaker_classification", dataclass=SpeakerClassificationConfig)
class SpeakerClassificationTask(FairseqTask):
    """Utterance classification; see the module docstring."""

    cfg: SpeakerClassificationConfig

    def __init__(self, cfg: SpeakerClassificationConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.root = Path(cfg.data) if cfg.data else Path(".")
        self.state.add_factory("labels", self._load_labels)
        self.state.add_factory("feature_dim", self._load_feature_dim)
        self._all_items: Optional[List[Utterance]] = None
        self._n_mels = 0

    @classmethod
    def setup_task(cls, cfg: SpeakerClassificationConfig, **kwargs) -> "SpeakerClassificationTask":
        return cls(cfg)

    # -- task state ----------------------------------------------------------------------------

    @property
    def labels(self) -> List[str]:
        """Class names in index order."""
        return self.state.labels

    @property
    def feature_dim(self) -> int:
        """Feature dimension of precomputed features (homework ``n_mels``), 0 otherwise."""
        return self.state.feature_dim

    @property
    def layout(self) -> str:
        """``homework``, ``manifest`` or ``folders``."""
        if self.cfg.input_type == "homework":
            return "homework"
        split_tsvs = [self.root / f"{s}.tsv" for s in (self.cfg.train_split, self.cfg.valid_split, "test")]
        if any(p.is_file() for p in split_tsvs):
            return "manifest"
        has_class_folders = any(p.is_dir() and not p.name.startswith((".", "_")) for p in self.root.iterdir()) \
            if self.root.is_dir() else False
        if any(self.root.glob("*.tsv")) and not has_class_folders:
            return "manifest"
        return "folders"

    def _load_labels(self) -> List[str]:
        layout = self.layout
        if layout == "homework":
            labels = read_mapping(self.root)
        elif layout == "folders":
            labels = sorted(scan_class_folders(self.root))
        else:
            dict_path = self.root / f"dict.{self.cfg.label_ext}.txt"
            train_lbl = self.root / f"{self.cfg.train_split}.{self.cfg.label_ext}"
            if dict_path.is_file():
                labels = read_label_dict(dict_path)
                if train_lbl.is_file():
                    unused = sorted(set(labels) - set(read_label_lines(train_lbl)))
                    if unused:
                        logger.warning("labels %s of %s have no training utterance in %s",
                                       unused[:10], dict_path, train_lbl)
            else:
                labels = sorted(set(read_label_lines(train_lbl)))
        if len(labels) < 2:
            raise UserError(f"{self.root}: found {len(labels)} class(es); classification needs at least 2")
        logger.info("%d classes (%s layout)", len(labels), layout)
        return labels

    def _load_feature_dim(self) -> int:
        if self.cfg.input_type != "homework":
            return 0
        self._labeled_pool()
        return self._n_mels

    @property
    def label_index(self) -> Dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}

    # -- datasets ------------------------------------------------------------------------------

    @property
    def samples_per_frame(self) -> int:
        return self.cfg.samples_per_frame or DEFAULT_SAMPLES_PER_FRAME[str(self.cfg.input_type)]

    def _labeled_pool(self) -> List[Utterance]:
        """All labeled training-side utterances of a layout without an explicit valid split."""
        if self._all_items is None:
            if self.layout == "homework":
                self._n_mels, self._all_items = read_homework_metadata(self.root, self.label_index)
            elif self.layout == "folders":
                self._all_items = folder_items(self.root, self.label_index)
            else:
                tsv = self.root / f"{self.cfg.train_split}.tsv"
                self._all_items = manifest_items(tsv, self.label_index, self.cfg.label_ext)
        return self._all_items

    def _split_items(self, split: str) -> List[Utterance]:
        c = self.cfg
        if self.layout == "homework":
            if split == "test":
                return read_testdata(self.root / "testdata.json")[1]
            if split not in (c.train_split, c.valid_split):
                raise UserError(f"homework layout has splits {c.train_split}, {c.valid_split}, test; got {split!r}")
            return self._holdout(split, self._labeled_pool())
        if self.layout == "folders":
            val_list, test_list = self.root / "validation_list.txt", self.root / "testing_list.txt"
            if val_list.is_file() or test_list.is_file():
                val = read_split_list(val_list) if val_list.is_file() else set()
                test = read_split_list(test_list) if test_list.is_file() else set()
                pool = self._labeled_pool()
                if split == c.valid_split:
                    return [u for u in pool if u.uid in val]
                if split == "test":
                    return [u for u in pool if u.uid in test]
                return [u for u in pool if u.uid not in val and u.uid not in test]
            if split not in (c.train_split, c.valid_split):
                raise UserError(f"{self.root}: a folder tree without validation_list.txt/testing_list.txt "
                                f"has splits {c.train_split} and {c.valid_split}; got {split!r}")
            return self._holdout(split, self._labeled_pool())
        tsv = self.root / f"{split}.tsv"
        if split == c.train_split and not (self.root / f"{c.valid_split}.tsv").is_file():
            return self._holdout(split, self._labeled_pool())
        if split == c.valid_split and not tsv.is_file():
            if not (self.root / f"{c.train_split}.tsv").is_file():
                raise UserError(f"neither {tsv} nor {self.root / (c.train_split + '.tsv')} exists")
            return self._holdout(split, self._labeled_pool())
        require = split in (c.train_split, c.valid_split)
        return manifest_items(tsv, self.label_index, c.label_ext, require_labels=require)

    def _holdout(self, split: str, pool: List[Utterance]) -> List[Utterance]:
        pct = self.cfg.valid_percent if split in (self.cfg.train_split, self.cfg.valid_split) else 0.0
        if split == self.cfg.valid_split and pct <= 0:
            raise UserError(f"no {split} split on disk under {self.root} and task.valid_percent is "
                            f"{self.cfg.valid_percent}: set task.valid_percent > 0 or provide one")
        train_idx, valid_idx = holdout_split([u.label for u in pool], pct, self.cfg.split_seed)
        chosen = valid_idx if split == self.cfg.valid_split else train_idx
        return [pool[i] for i in chosen]

    def build_utterance_dataset(self, items: List[Utterance], train: bool) -> UtteranceDataset:
        """Dataset for ``items``: cropped and shuffled when ``train``, whole utterances otherwise."""
        c = self.cfg
        if not items:
            raise UserError(f"{self.root}: the split is empty")
        if c.input_type == "homework":
            crop = c.segment_len if train else None
            return FeatureUtteranceDataset(items, self.feature_dim, crop, shuffle=train, seed=c.split_seed)
        crop = c.segment_len * self.samples_per_frame if train else None
        return AudioUtteranceDataset(items, c.sample_rate, crop, shuffle=train, seed=c.split_seed)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> None:
        items = self._split_items(split)
        if not items:
            raise UserError(f"split {split!r} of {self.root} is empty")
        train = split == self.cfg.train_split
        self.datasets[split] = self.build_utterance_dataset(items, train)
        counts = self._class_counts(items)
        logger.info("%s: %d utterances, %d classes (min %d, max %d per class)%s", split, len(items),
                    len(counts), min(counts.values()) if counts else 0, max(counts.values()) if counts else 0,
                    f", crops of {self.datasets[split].crop}" if train else "")
        if train:
            # an empty class in the training split can never be learned
            missing = [self.labels[i] for i in range(len(self.labels)) if i not in counts]
            if missing:
                raise UserError(f"{self.root}: classes {missing[:10]} have no training utterance "
                                f"(empty class): remove them from the label inventory or add data")

    @staticmethod
    def _class_counts(items: List[Utterance]) -> Dict[int, int]:
        out: Dict[int, int] = {}
        for u in items:
            if u.label >= 0:
                out[u.label] = out.get(u.label, 0) + 1
        return out

    def inference_dataset(self, path: str) -> Tuple[UtteranceDataset, List[str]]:
        """Unlabeled-or-labeled dataset for prediction from ``testdata.json`` or a manifest ``.tsv``.

        Returns:
            ``(dataset, ids)``: ids are ``feature_path`` (homework) or manifest relative paths.
        """
        p = Path(path)
        if p.suffix == ".json":
            n_mels, items = read_testdata(p)
            dim = self.feature_dim
            if n_mels is not None and int(n_mels) != dim:
                raise UserError(f"{p} says n_mels={n_mels} but the model was trained on {dim}-dim features")
            ds: UtteranceDataset = FeatureUtteranceDataset(items, dim)
        else:
            if self.cfg.input_type == "homework":
                raise UserError(f"{p}: this model takes precomputed features; give a testdata.json")
            items = manifest_items(p, self.label_index, self.cfg.label_ext, require_labels=False)
            ds = AudioUtteranceDataset(items, self.cfg.sample_rate)
        return ds, [u.uid for u in items]

    # -- training ------------------------------------------------------------------------------

    def optimizer_step(self, optimizer, model, update_num) -> None:
        super().optimizer_step(optimizer, model, update_num)
        inner = getattr(model, "module", model)
        hook = getattr(inner, "after_optimizer_step", None)
        if hook is not None:
            hook()

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None


__all__ = ["SpeakerClassificationTask", "SpeakerClassificationConfig"]
