"""fairseq task ``pase_pretraining``: PASE self-supervised training on random waveform chunks."""


import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from fairseq_ext.data.pase_dataset import PaseChunkDataset, read_speaker_file

logger = logging.getLogger(__name__)


@dataclass
class PasePretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder with the {split}.tsv manifests"})
    sample_rate: int = field(default=16000, metadata={"help": "sample rate of the audio (Hz)"})
    chunk_size: int = field(default=16000, metadata={"help": "samples per training chunk (PASE: 16000 = 1 s)"})
    short_utterances: ChoiceEnum(["pad", "skip"]) = field(
        default="pad", metadata={"help": "utterances shorter than chunk_size: zero-pad them (masked) or skip them"})
    min_sample_size: int = field(
        default=1600, metadata={"help": "utterances shorter than this many samples are always skipped"})
    contrastive_chunks: bool = field(
        default=True, metadata={"help": "load a positive (same utterance) and a negative (other utterance) "
                                        "chunk per item; required by the LIM and GIM workers"})
    speaker_file: Optional[str] = field(
        default=None, metadata={"help": "optional uid<TAB>speaker file: negatives then come from another speaker"})
    train_subset: str = field(
        default=II("dataset.train_subset"),
        metadata={"help": "split that gets new random chunks every epoch (others keep fixed chunks)"})
    seed: int = field(default=II("common.seed"), metadata={"help": "seed of the chunk offsets"})


@register_task("pase_pretraining", dataclass=PasePretrainingConfig)
class PasePretrainingTask(FairseqTask):
    """Loads ``{data}/{split}.tsv`` as :class:`PaseChunkDataset`; the model computes every target."""

    cfg: PasePretrainingConfig

    def __init__(self, cfg: PasePretrainingConfig):
        super().__init__(cfg)
        self._speakers = None

    @classmethod
    def setup_task(cls, cfg: PasePretrainingConfig, **kwargs) -> "PasePretrainingTask":
        return cls(cfg)

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return sys.maxsize

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> None:
        if self.cfg.speaker_file and self._speakers is None:
            self._speakers = read_speaker_file(self.cfg.speaker_file)
        train = split in str(self.cfg.train_subset).split(",")
        self.datasets[split] = PaseChunkDataset(
            os.path.join(self.cfg.data, f"{split}.tsv"),
            sample_rate=self.cfg.sample_rate,
            chunk_size=self.cfg.chunk_size,
            short_utterances=str(self.cfg.short_utterances),
            min_sample_size=self.cfg.min_sample_size,
            contrastive=self.cfg.contrastive_chunks,
            speakers=self._speakers,
            seed=self.cfg.seed,
            random_per_epoch=train,
        )
        logger.info("%s: %d utterances, chunks of %d samples", split, len(self.datasets[split]), self.cfg.chunk_size)
