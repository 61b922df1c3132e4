"""``phone_recognition``: CTC phone recognition on a frozen upstream (SUPERB's PR downstream task).

Data (``task.data``): fairseq manifests ``{split}.tsv``, phone transcripts ``{split}.phn``
(``uid<TAB>p1 p2 ...``, uid = the audio file's basename without extension) and the phone dictionary
``dict.phn.txt`` (``phone count`` per line; CTC blank = ``<s>``, index 0). ``fairseq-ext-timit-prep``
writes this layout from a TIMIT copy. See :mod:`fairseq_ext.data.phone_transcripts`.

The upstream (``model.upstream``, mirrored here as ``task.upstream``) is loaded once, by the task,
through :func:`fairseq_ext.encoder.load_upstream`: the datasets need its frame count to check that
every transcript fits CTC (fairseq loads the validation set before it builds the model), and the
model (:mod:`fairseq_ext.models.phone_recognizer`) takes the same object.

The dictionary is task state, saved in every checkpoint: evaluation (``fairseq-ext-pr-eval``) needs
no training data.

``task.feature_cache`` (``memory`` or a folder) wraps the upstream in
:class:`fairseq_ext.data.feature_cache.CachedUpstream`: each utterance's hidden states are computed once
and read back in every later epoch (and, from a folder, by later runs on the same upstream).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from fairseq_ext.base.errors import UserError
from fairseq_ext.data.phone_dataset import PhoneDataset, read_phone_split
from fairseq_ext.data.phone_transcripts import CTC_BLANK, load_phone_dictionary
from fairseq_ext.encoder import Upstream, load_upstream

logger = logging.getLogger(__name__)


@dataclass
class PhoneRecognitionConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={
        "help": "folder with {split}.tsv (fairseq manifest), {split}.phn (uid<TAB>p1 p2 ...) and dict.phn.txt"})
    transcript_ext: str = field(default="phn", metadata={"help": "transcript extension: {split}.{transcript_ext}"})
    upstream: str = field(default=II("model.upstream"), metadata={
        "help": "upstream checkpoint (set model.upstream; this mirrors it)"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate (Hz); must be the upstream's"})
    train_split: str = field(default="train", metadata={"help": "split whose batches are shuffled"})
    feature_cache: str = field(default="", metadata={
        "help": "cache the frozen upstream's hidden states so each utterance is encoded once per run: "
                "'' = off, 'memory', or a folder (one (L, T, C) float32 .npy per utterance, reused by later "
                "runs on the same upstream; see fairseq_ext.data.feature_cache)"})


@register_task("phone_recognition", dataclass=PhoneRecognitionConfig)
class PhoneRecognitionTask(FairseqTask):
    """CTC phone recognition; see the module docstring."""

    cfg: PhoneRecognitionConfig
    blank_symbol = CTC_BLANK

    def __init__(self, cfg: PhoneRecognitionConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.state.add_factory("dictionary", self._load_dictionary)
        self._upstream: Optional[Upstream] = None

    @classmethod
    def setup_task(cls, cfg: PhoneRecognitionConfig, **kwargs) -> "PhoneRecognitionTask":
        return cls(cfg)

    def _load_dictionary(self):
        d = load_phone_dictionary(os.path.join(self.cfg.data, "dict.phn.txt"))
        logger.info("phone dictionary: %d phones + %d specials", len(d) - d.nspecial, d.nspecial)
        return d

    @property
    def target_dictionary(self):
        return self.state.dictionary

    @property
    def source_dictionary(self):
        return None

    @property
    def upstream(self) -> Upstream:
        """The frozen upstream, loaded from ``cfg.upstream`` on first use (then shared with the model)."""
        if self._upstream is None:
            path = self.cfg.upstream
            if not path:
                raise UserError("model.upstream is empty: give the upstream checkpoint (model.upstream=/path/ckpt.pt)")
            upstream = load_upstream(path)
            if upstream.sample_rate != self.cfg.sample_rate:
                raise UserError(f"{path} was trained at {upstream.sample_rate} Hz but task.sample_rate is "
                                f"{self.cfg.sample_rate}")
            for p in upstream.model.parameters():
                p.requires_grad_(False)
            logger.info("frozen upstream %s: %s, %d layers, dim %d, %d samples per frame", path,
                        type(upstream).__name__, upstream.num_layers, upstream.dim, upstream.frame_shift)
            if self.cfg.feature_cache:
                from fairseq_ext.base.steps import file_digest
                from fairseq_ext.data.feature_cache import CachedUpstream

                ident = {"upstream": str(path), "digest": file_digest(path) if os.path.isfile(path) else None}
                upstream = CachedUpstream(upstream, self.cfg.feature_cache, ident)
                logger.info("upstream features cached in %s", self.cfg.feature_cache)
            self._upstream = upstream
        return self._upstream

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> None:
        """``{split}.tsv`` + ``{split}.phn``; an unlabeled split (no ``.phn``) is allowed outside training."""
        labeled = split == self.cfg.train_split or kwargs.get("require_transcripts", True)
        dict_file = os.path.join(self.cfg.data, "dict.phn.txt")
        dict_name = dict_file if os.path.isfile(dict_file) else "the checkpoint's phone dictionary"
        items = read_phone_split(self.cfg.data, split, self.target_dictionary, self.upstream.num_frames,
                                 self.cfg.transcript_ext, require_transcripts=labeled, dict_name=dict_name)
        self.datasets[split] = PhoneDataset(items, self.target_dictionary.pad(), self.cfg.sample_rate,
                                            shuffle=split == self.cfg.train_split)
        n_phones = sum(len(it.phones or ()) for it in items)
        logger.info("%s: %d utterances, %.1f s of audio, %d phones", split, len(items),
                    sum(it.n_samples for it in items) / self.cfg.sample_rate, n_phones)

    def max_positions(self):
        return None


__all__ = ["PhoneRecognitionConfig", "PhoneRecognitionTask"]
