"""Audio with phone-id targets for CTC phone recognition: a fairseq manifest plus ``uid<TAB>p1 p2 ...``.

:func:`read_phone_split` reads ``{split}.tsv`` (fairseq's manifest) and ``{split}.{ext}`` (phone
transcripts, :mod:`fairseq_ext.data.phone_transcripts`), encodes each utterance's phones with the phone
dictionary and checks that the upstream's frames can hold them under CTC; every problem is a
:class:`~fairseq_ext.base.errors.UserError` naming the file and line. Without a transcript file
(``require_transcripts=False``) the utterances are unlabeled (decoding only).

:class:`PhoneDataset` yields whole utterances (CTC needs all of an utterance's frames) and pads a
batch with zeros on the right::

    {"id": (B,), "net_input": {"source": (B, S) float, "padding_mask": (B, S) bool, True on padding},
     "target": (B, N) int64 padded with the dictionary's pad, "target_lengths": (B,), "ntokens": int,
     "nsentences": int}
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from fairseq_ext.base.manifest import read_audio, read_manifest
from fairseq_ext.data.phone_transcripts import (
    check_ctc_frames, encode_phones, read_phone_transcripts, transcripts_for_manifest,
)

if TYPE_CHECKING:
    from fairseq.data import Dictionary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhoneUtterance:
    """One utterance: audio file, sample count, id, manifest ``path:line``, phone ids (None: unlabeled)."""

    path: str
    n_samples: int
    uid: str
    where: str
    phones: Optional[Tuple[int, ...]] = None


def read_phone_split(
    data: str, split: str, dictionary: "Dictionary", num_frames: Callable[[int], int],
    transcript_ext: str = "phn", require_transcripts: bool = True, dict_name: str = "",
) -> List[PhoneUtterance]:
    """The utterances of ``{data}/{split}.tsv`` with their phone ids from ``{data}/{split}.{transcript_ext}``.

    Args:
        data: folder holding the manifest, the transcripts and ``dict.phn.txt``.
        split: split name.
        dictionary: the phone dictionary (:func:`~fairseq_ext.data.phone_transcripts.load_phone_dictionary`).
        num_frames: frames the upstream gives for ``n_samples`` samples (CTC length check).
        transcript_ext: transcript file extension.
        require_transcripts: a missing transcript file is an error (otherwise: unlabeled utterances).
        dict_name: where ``dictionary`` came from, for messages (default ``{data}/dict.phn.txt``).
    Raises:
        UserError: bad manifest or transcript line, an utterance without transcript, a phone missing
            from the dictionary, a transcript longer than the frames allow (each naming file and line).
    """
    manifest = read_manifest(os.path.join(data, f"{split}.tsv"))
    uids = manifest.unique_uids(fix="phone transcripts are keyed by file basename: rename one of the files")
    phn_path = os.path.join(data, f"{split}.{transcript_ext}")
    wheres = [f"{manifest.path}:{e.line}" for e in manifest.entries]
    if not require_transcripts and not os.path.isfile(phn_path):
        return [PhoneUtterance(manifest.audio_path(e), e.n_samples, uid, where)
                for e, uid, where in zip(manifest.entries, uids, wheres)]
    transcripts = transcripts_for_manifest(read_phone_transcripts(phn_path), manifest)
    dict_path = dict_name or os.path.join(data, "dict.phn.txt")
    out = []
    for entry, uid, where, t in zip(manifest.entries, uids, wheres, transcripts):
        ids = encode_phones(t, dictionary, dict_path)
        check_ctc_frames(t, num_frames(entry.n_samples))
        out.append(PhoneUtterance(manifest.audio_path(entry), entry.n_samples, uid, where, tuple(ids)))
    return out


class PhoneDataset(FairseqDataset):
    """Whole utterances (raw audio) and their phone ids; see the module docstring for a batch.

    Args:
        items: the utterances (labeled or not).
        pad_idx: padding index of the targets (the dictionary's ``pad()``).
        sample_rate: required audio sample rate.
        shuffle: random order of equal-length buckets (training); otherwise longest first.
    """

    def __init__(self, items: Sequence[PhoneUtterance], pad_idx: int, sample_rate: int = 16000,
                 shuffle: bool = False):
        super().__init__()
        self.items = list(items)
        self.pad_idx = pad_idx
        self.sample_rate = sample_rate
        self.shuffle = shuffle
        self.sizes = np.array([it.n_samples for it in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        it = self.items[index]
        wav = read_audio(it.path, self.sample_rate, it.n_samples, where=it.where)
        target = torch.tensor(it.phones if it.phones is not None else (), dtype=torch.long)
        return {"id": index, "source": torch.from_numpy(wav), "target": target}

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    def ordered_indices(self) -> np.ndarray:
        """Longest first; ties in random order when shuffling (fairseq seeds numpy per epoch)."""
        if self.shuffle:
            order = [np.random.permutation(len(self)), self.sizes]
        else:
            order = [np.arange(len(self)), self.sizes]
        return np.lexsort(order)[::-1].copy()

    def collater(self, samples: List[Dict]) -> Dict:
        samples = [s for s in samples if s["source"].numel() > 0]
        if not samples:
            return {}
        lengths = [s["source"].numel() for s in samples]
        source = samples[0]["source"].new_zeros(len(samples), max(lengths))  # (B, S)
        padding_mask = torch.zeros(len(samples), max(lengths), dtype=torch.bool)  # (B, S)
        for b, (s, n) in enumerate(zip(samples, lengths)):
            source[b, :n] = s["source"]
            padding_mask[b, n:] = True
        targets = [s["target"] for s in samples]
        target_lengths = torch.tensor([t.numel() for t in targets], dtype=torch.long)
        target = data_utils.collate_tokens(targets, self.pad_idx)  # (B, N)
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "net_input": {"source": source, "padding_mask": padding_mask},
            "target": target,
            "target_lengths": target_lengths,
            "ntokens": int(target_lengths.sum()),
            "nsentences": len(samples),
        }


__all__ = ["PhoneDataset", "PhoneUtterance", "read_phone_split"]
