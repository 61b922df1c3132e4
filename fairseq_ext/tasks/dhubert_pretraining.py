"""Task ``dhubert_pretraining``: HuBERT pre-training data plus speaker labels and frame-level pitch.

Files, next to fairseq's ``{data}/{split}.tsv`` and ``{label_dir}/{split}.{label}``:

- ``{spk_dir}/{split}.spk`` (one speaker name per manifest line) and ``{spk_dir}/dict.spk.txt``
  (``name count`` per line; speaker index = 0-based line order). ``spk_dir`` defaults to
  ``label_dir``. The speaker list is saved in checkpoints (task state).
- ``{pitch_dir}/{split}_{rank}_{nshard}.npy/.len``: (frames, 2) float32 [log F0, voiced flag] at
  ``pitch_rate`` Hz, and ``{pitch_dir}/{pitch_stats_split}.pitch_stats.json`` for normalisation.

See docs/dhubert.md.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask, LabelEncoder

from fairseq_ext.data.dhubert_dataset import (
    PITCH_NORM_CHOICES,
    DHubertDataset,
    load_pitch_stats,
    load_speaker_dict,
)
from fairseq_ext.base.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class DHubertPretrainingConfig(HubertPretrainingConfig):
    load_speaker: bool = field(
        default=True, metadata={"help": "load speaker labels {spk_dir}/{split}.spk and dict.spk.txt"})
    spk_dir: Optional[str] = field(
        default=None, metadata={"help": "folder of {split}.spk and dict.spk.txt (default: label_dir, else data)"})
    load_pitch: bool = field(
        default=True, metadata={"help": "load frame-level pitch shards from pitch_dir"})
    pitch_dir: Optional[str] = field(
        default=None, metadata={"help": "folder of pitch shards {split}_{rank}_{nshard}.npy/.len and "
                                        "{split}.pitch_stats.json (required with load_pitch)"})
    pitch_rate: float = field(
        default=100.0, metadata={"help": "frame rate of the pitch shards in Hz (50 or 100)"})
    pitch_norm: ChoiceEnum(PITCH_NORM_CHOICES) = field(  # type: ignore[valid-type]
        default="speaker", metadata={"help": "log-F0 normalisation: none, global / speaker (z-score with the "
                                             "statistics of pitch_stats_split), utterance (own voiced frames)"})
    pitch_stats_split: str = field(
        default="train", metadata={"help": "split whose {split}.pitch_stats.json normalises every split"})
    length_tol_s: float = field(
        default=0.1, metadata={"help": "max |frames / rate - audio duration| in seconds per utterance for "
                                       "k-means labels and pitch; beyond it loading fails"})


@register_task("dhubert_pretraining", dataclass=DHubertPretrainingConfig)
class DHubertPretrainingTask(HubertPretrainingTask):
    """HuBERT pre-training task whose batches also carry ``spk_id`` and ``pitch`` (see DHubertDataset)."""

    cfg: DHubertPretrainingConfig

    def __init__(self, cfg: DHubertPretrainingConfig) -> None:
        if cfg.fine_tuning:
            raise UserError("dhubert_pretraining is for pre-training; fine-tune with fairseq's hubert_pretraining")
        super().__init__(cfg)
        if cfg.load_speaker:
            self.state.add_factory("speakers", self.load_speakers)

    @property
    def speakers(self) -> Optional[List[str]]:
        """Speaker names, index = speaker id (None when ``load_speaker`` is off)."""
        return self.state.speakers if self.cfg.load_speaker else None

    def get_spk_dir(self) -> str:
        return self.cfg.spk_dir or self.get_label_dir()

    def load_speakers(self) -> List[str]:
        names = load_speaker_dict(os.path.join(self.get_spk_dir(), "dict.spk.txt"))
        logger.info("%d speakers in %s/dict.spk.txt", len(names), self.get_spk_dir())
        return names

    def load_dictionaries(self):
        """fairseq's dictionaries ``{label_dir}/dict.{label}.txt``; a missing file or a repeated entry is
        a sentence naming the file (fairseq raises FileNotFoundError / RuntimeError)."""
        label_dir = self.get_label_dir()
        for label in self.cfg.labels:
            path = os.path.join(label_dir, f"dict.{label}.txt")
            if not os.path.isfile(path):
                raise UserError(f"label dictionary {path} does not exist: fairseq-ext-merge-labels writes it "
                                f"beside {label_dir}/{{split}}.{label} (or set task.label_dir)")
            seen = {}
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    word = line.split(" ", 1)[0].strip()
                    if word in seen and "#fairseq:overwrite" not in line:
                        raise UserError(f"{path}:{n}: {word!r} is listed twice (also line {seen[word]}): "
                                        f"one 'label count' line per label; rewrite it with fairseq-ext-merge-labels")
                    seen.setdefault(word, n)
        return super().load_dictionaries()

    def load_dataset(self, split: str, **kwargs) -> None:
        cfg = self.cfg
        if cfg.label_rate <= 0:
            raise UserError(f"task.label_rate={cfg.label_rate}: pre-training needs frame labels "
                            f"(100 for MFCC labels, 50 for HuBERT-feature labels)")
        dicts = self.dictionaries
        need_spk_file = cfg.load_speaker or (cfg.load_pitch and cfg.pitch_norm == "speaker")
        pitch_stats = None
        if cfg.load_pitch:
            if not cfg.pitch_dir:
                raise UserError("task.load_pitch is set but task.pitch_dir is not: set task.pitch_dir "
                                "or task.load_pitch=false")
            if cfg.pitch_norm in ("global", "speaker"):
                pitch_stats = load_pitch_stats(os.path.join(cfg.pitch_dir, f"{cfg.pitch_stats_split}.pitch_stats.json"))
        self.datasets[split] = DHubertDataset(
            f"{cfg.data}/{split}.tsv",
            sample_rate=cfg.sample_rate,
            label_paths=[f"{self.get_label_dir()}/{split}.{lab}" for lab in cfg.labels],
            label_rates=cfg.label_rate,
            pad_list=[d.pad() for d in dicts],
            eos_list=[d.eos() for d in dicts],
            label_processors=[LabelEncoder(d) for d in dicts],
            max_keep_sample_size=cfg.max_keep_size,
            min_keep_sample_size=cfg.min_sample_size,
            max_sample_size=cfg.max_sample_size,
            pad_audio=cfg.pad_audio,
            normalize=cfg.normalize,
            store_labels=False,
            random_crop=cfg.random_crop,
            single_target=cfg.single_target,
            speaker_path=os.path.join(self.get_spk_dir(), f"{split}.spk") if need_spk_file else None,
            speaker_dict=self.speakers if cfg.load_speaker else None,
            pitch_dir=cfg.pitch_dir if cfg.load_pitch else None,
            pitch_split=split,
            pitch_rate=cfg.pitch_rate,
            pitch_norm=cfg.pitch_norm,
            pitch_stats=pitch_stats,
            length_tol_s=cfg.length_tol_s,
        )
