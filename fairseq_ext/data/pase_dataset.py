"""Random fixed-size chunks of a fairseq manifest, with the extra chunks PASE's LIM/GIM workers need.

Each item is an anchor chunk of ``chunk_size`` samples at a random offset of utterance ``i``,
and (with ``contrastive=True``) a positive chunk (another random offset of the same utterance)
and a negative chunk (a random offset of another utterance, of another speaker when speaker
labels are given). Utterances shorter than ``chunk_size`` are zero-padded (the padding masks
say where) or skipped; utterances shorter than ``min_sample_size`` are always skipped.
Offsets depend only on ``(seed, epoch, index)``, so runs are reproducible; validation sets use
``epoch = 0`` always (``random_per_epoch=False``).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, ManifestEntry, read_manifest

logger = logging.getLogger(__name__)


def read_speaker_file(path: str) -> Dict[str, str]:
    """``uid<TAB>speaker`` lines -> ``{uid: speaker}`` (e.g. the demo corpus's ``speakers.tsv``)."""
    out: Dict[str, str] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read speaker file {path} (task.speaker_file): {e}") from None
    with f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise UserError(f"{path}:{i}: expected 'uid<TAB>speaker', got {line.strip()!r}")
            out[parts[0]] = parts[1]
    return out


class PaseChunkDataset(FairseqDataset):
    """Chunks of the utterances of a manifest.

    Args:
        manifest_path: fairseq ``{split}.tsv``.
        sample_rate: required sample rate.
        chunk_size: samples per chunk.
        short_utterances: ``"pad"`` or ``"skip"`` utterances shorter than ``chunk_size``.
        min_sample_size: utterances shorter than this are always skipped.
        contrastive: also return positive and negative chunks.
        speakers: optional ``{uid: speaker}``; negatives then come from other speakers.
        seed: base seed of the chunk offsets.
        random_per_epoch: draw new offsets every epoch (training) or keep them fixed (validation).
    Items:
        ``{"id", "source" (<= chunk_size,), "length", "positive", "positive_length", "negative",
        "negative_length", "negative_id"}`` (the last five only when ``contrastive``).
    """

    def __init__(self, manifest_path: str, sample_rate: int = 16000, chunk_size: int = 16000,
                 short_utterances: str = "pad", min_sample_size: int = 1600, contrastive: bool = True,
                 speakers: Optional[Dict[str, str]] = None, seed: int = 1, random_per_epoch: bool = True):
        super().__init__()
        if short_utterances not in ("pad", "skip"):
            raise ValueError(f"short_utterances must be 'pad' or 'skip', got {short_utterances!r}")
        self.manifest: Manifest = read_manifest(manifest_path)
        self.sample_rate = sample_rate
        self.chunk_size = chunk_size
        self.contrastive = contrastive
        self.seed = seed
        self.random_per_epoch = random_per_epoch
        self.epoch = 1
        limit = chunk_size if short_utterances == "skip" else min(min_sample_size, chunk_size)
        self.entries: List[ManifestEntry] = [e for e in self.manifest.entries if e.n_samples >= limit]
        n_skipped = len(self.manifest.entries) - len(self.entries)
        n_padded = sum(e.n_samples < chunk_size for e in self.entries)
        if n_skipped:
            logger.warning("%s: skipped %d of %d utterances shorter than %d samples",
                           manifest_path, n_skipped, len(self.manifest.entries), limit)
        if n_padded:
            logger.info("%s: %d utterances shorter than chunk_size=%d are zero-padded",
                        manifest_path, n_padded, chunk_size)
        if not self.entries:
            raise UserError(
                f"{manifest_path}: no utterance is long enough ({limit} samples): lower task.chunk_size "
                f"or task.min_sample_size, or set task.short_utterances=pad")
        if contrastive and len(self.entries) < 2:
            logger.warning("%s: a single utterance: negative chunks come from the same utterance", manifest_path)
        self.speaker_ids: Optional[np.ndarray] = None
        if speakers is not None:
            uids = [self.manifest.uid(e) for e in self.entries]
            missing = [u for u in uids if u not in speakers]
            if missing:
                logger.warning("%d utterances have no speaker label (e.g. %s): their negatives may come from "
                               "any utterance", len(missing), missing[0])
            names = sorted({speakers[u] for u in uids if u in speakers})
            index = {s: i for i, s in enumerate(names)}
            self.speaker_ids = np.array([index.get(speakers.get(u), -1) for u in uids], dtype=np.int64)
            if len(names) < 2:
                logger.warning("fewer than two speakers: negatives cannot come from another speaker")
                self.speaker_ids = None
        self.sizes = np.full(len(self.entries), chunk_size, dtype=np.int64)

    # ------------------------------------------------------------------ fairseq interface
    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_tokens(self, index: int) -> int:
        return self.chunk_size

    def size(self, index: int) -> int:
        return self.chunk_size

    def ordered_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch if self.random_per_epoch else 0, 7])
        return rng.permutation(len(self))

    @property
    def supports_prefetch(self) -> bool:
        return False

    # ------------------------------------------------------------------ items
    def _read_chunk(self, entry: ManifestEntry, rng: np.random.Generator) -> np.ndarray:
        import soundfile as sf

        path = self.manifest.audio_path(entry)
        where = f"{self.manifest.path}:{entry.line}"
        n = entry.n_samples
        start = int(rng.integers(0, n - self.chunk_size + 1)) if n > self.chunk_size else 0
        frames = min(n, self.chunk_size)
        try:
            wav, sr = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises several types for missing / corrupt files
            raise UserError(f"{where}: cannot read audio file {path}: {e}") from None
        if sr != self.sample_rate:
            raise UserError(f"{where}: {path} has sample rate {sr} Hz, expected {self.sample_rate} Hz "
                            f"(task.sample_rate); resample it")
        if wav.shape[1] != 1:
            raise UserError(f"{where}: {path} has {wav.shape[1]} channels; convert it to mono")
        if wav.shape[0] < frames:
            raise UserError(f"{where}: {path} has fewer samples than the manifest says ({n}); "
                            f"regenerate the manifest")
        return wav[:, 0]

    def _negative_index(self, index: int, rng: np.random.Generator) -> int:
        n = len(self.entries)
        if n < 2:
            return index
        if self.speaker_ids is not None and self.speaker_ids[index] >= 0:
            others = np.flatnonzero((self.speaker_ids != self.speaker_ids[index]) & (self.speaker_ids >= 0))
            if len(others):
                return int(others[rng.integers(len(others))])
        j = int(rng.integers(n - 1))
        return j + 1 if j >= index else j

    def __getitem__(self, index: int) -> Dict[str, object]:
        rng = np.random.default_rng([self.seed, self.epoch if self.random_per_epoch else 0, int(index)])
        entry = self.entries[index]
        item: Dict[str, object] = {"id": index}
        anchor = self._read_chunk(entry, rng)
        item["source"], item["length"] = torch.from_numpy(anchor), len(anchor)
        if self.contrastive:
            pos = self._read_chunk(entry, rng)
            neg_index = self._negative_index(index, rng)
            neg = self._read_chunk(self.entries[neg_index], rng)
            item["positive"], item["positive_length"] = torch.from_numpy(pos), len(pos)
            item["negative"], item["negative_length"] = torch.from_numpy(neg), len(neg)
            item["negative_id"] = neg_index
        return item

    def _pad(self, wavs: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = torch.zeros(len(wavs), self.chunk_size)
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        for i, w in enumerate(wavs):
            out[i, : len(w)] = w
        mask = torch.arange(self.chunk_size).unsqueeze(0) >= lengths.unsqueeze(1)
        return {"wav": out, "padding_mask": mask, "lengths": lengths}

    def collater(self, samples: List[Dict[str, object]]) -> Dict[str, object]:
        """``net_input``: ``source`` ``(B, chunk_size)``, ``padding_mask`` ``(B, chunk_size)`` (True =
        padded) and, when contrastive, ``positive``/``negative`` and their padding masks."""
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        anchor = self._pad([s["source"] for s in samples])
        net_input: Dict[str, torch.Tensor] = {"source": anchor["wav"]}
        if bool(anchor["padding_mask"].any()):
            net_input["padding_mask"] = anchor["padding_mask"]
        if self.contrastive:
            for key in ("positive", "negative"):
                part = self._pad([s[key] for s in samples])
                net_input[key] = part["wav"]
                if bool(part["padding_mask"].any()):
                    net_input[f"{key}_padding_mask"] = part["padding_mask"]
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "net_input": net_input,
            "nsentences": len(samples),
            "ntokens": int(anchor["lengths"].sum()),
        }
