"""HuBERT dataset that also yields each utterance's speaker id and frame-level pitch.

Input files (all aligned with the manifest ``{split}.tsv``, one entry per manifest line):

- ``{spk_dir}/{split}.spk``: one speaker name per line; ``{spk_dir}/dict.spk.txt``: ``name count``
  lines, speaker index = 0-based line order (see :func:`load_speaker_dict`).
- ``{pitch_dir}/{split}_{rank}_{nshard}.npy`` + ``.len``: float32 ``(frames, 2)`` =
  [natural log F0 (interpolated over unvoiced frames), voiced flag 0/1] at ``pitch_rate`` Hz,
  one complete set of shards, ranks concatenated in order (see :class:`PitchTable`).
- ``{pitch_dir}/{stats_split}.pitch_stats.json``: ``{"global": {"mean", "std", "n"},
  "speakers": {name: {"mean", "std", "n"}}}`` over voiced frames' log F0 (for normalisation).

Every sample gets the speaker id and the pitch frames of exactly the audio crop that the audio and
the k-means labels got: crop offset ``round(start * pitch_rate / sample_rate)``, like
``HubertDataset``'s label crop.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data.audio.hubert_dataset import HubertDataset

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, read_manifest
from fairseq_ext.base.shards import load_feat_shard, read_lengths

logger = logging.getLogger(__name__)

PITCH_NORM_CHOICES: Tuple[str, ...] = ("none", "global", "speaker", "utterance")


# --------------------------------------------------------------------------- speakers


def load_speaker_dict(path: os.PathLike | str) -> List[str]:
    """Read ``dict.spk.txt`` (``name count`` per line); returns names, index = line order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"speaker dictionary {path} does not exist: write one 'name count' line per speaker")
    names: List[str] = []
    seen: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise UserError(f"{path}:{i}: expected 'name count', got {line.rstrip()!r}")
            if parts[0] in seen:
                raise UserError(f"{path}:{i}: speaker {parts[0]!r} already listed on line {seen[parts[0]]}")
            seen[parts[0]] = i
            names.append(parts[0])
    if not names:
        raise UserError(f"speaker dictionary {path} is empty")
    return names


def read_speaker_file(path: os.PathLike | str, manifest: Manifest) -> List[str]:
    """Read ``{split}.spk`` (one speaker name per manifest line) and check it against ``manifest``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"speaker label file {path} does not exist (one speaker name per line of {manifest.path})")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    if len(names) != len(manifest):
        n = min(len(names), len(manifest))
        first = (f"; first utterance without a speaker: {manifest.entries[n].relpath} "
                 f"({manifest.path}:{manifest.entries[n].line})" if len(names) < len(manifest) else "")
        raise UserError(
            f"{path} has {len(names)} lines but {manifest.path} lists {len(manifest)} utterances{first}: "
            f"write one speaker name per manifest line, in manifest order")
    for i, (name, e) in enumerate(zip(names, manifest.entries), start=1):
        if not name or len(name.split()) != 1:
            raise UserError(f"{path}:{i}: expected one speaker name for {e.relpath}, got {name!r}")
    return names


# --------------------------------------------------------------------------- pitch


_SHARD_RE = r"^{split}_(\d+)_(\d+)\.npy$"


def find_pitch_shards(pitch_dir: os.PathLike | str, split: str) -> int:
    """Number of shards of the single complete ``{split}_{rank}_{nshard}.npy`` set in ``pitch_dir``."""
    pitch_dir = Path(pitch_dir)
    if not pitch_dir.is_dir():
        raise UserError(
            f"pitch folder {pitch_dir} does not exist: dump pitch with simple_kmeans/dump_pitch_feature.py")
    pat = re.compile(_SHARD_RE.format(split=re.escape(split)))
    sets: Dict[int, set] = {}
    for p in pitch_dir.iterdir():
        m = pat.match(p.name)
        if m:
            sets.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not sets:
        raise UserError(f"no pitch shards {split}_RANK_NSHARD.npy in {pitch_dir}: dump pitch for split {split!r}")
    if len(sets) > 1:
        raise UserError(
            f"{pitch_dir} holds several shard sets for split {split!r} (nshard = "
            f"{', '.join(map(str, sorted(sets)))}): delete the stale ones")
    (nshard, ranks), = sets.items()
    missing = sorted(set(range(nshard)) - ranks)
    if missing or any(r >= nshard for r in ranks):
        raise UserError(
            f"pitch shards of split {split!r} in {pitch_dir} are incomplete: ranks "
            f"{missing} of nshard={nshard} are missing; rerun those dump jobs")
    return nshard


class PitchTable:
    """All utterances' pitch of one split, concatenated over shards and memory-mapped lazily.

    Args:
        pitch_dir: folder with the shards.
        split: split name.
    """

    def __init__(self, pitch_dir: os.PathLike | str, split: str) -> None:
        self.pitch_dir, self.split = str(pitch_dir), split
        self.nshard = find_pitch_shards(pitch_dir, split)
        lengths, shard_of = [], []
        for r in range(self.nshard):
            lens = read_lengths(Path(pitch_dir) / f"{split}_{r}_{self.nshard}.len")
            lengths.append(lens)
            shard_of.append(np.full(len(lens), r, dtype=np.int64))
        self.lengths = np.concatenate(lengths)
        self.shard_of = np.concatenate(shard_of)
        offsets = [np.concatenate([[0], np.cumsum(lens)[:-1]]) for lens in lengths]
        self.offsets = np.concatenate(offsets).astype(np.int64)
        self._feats: Optional[List[np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.lengths)

    def shard_name(self, index: int) -> str:
        return f"{self.pitch_dir}/{self.split}_{self.shard_of[index]}_{self.nshard}.npy"

    def _open(self) -> List[np.ndarray]:
        feats = []
        for r in range(self.nshard):
            f, _ = load_feat_shard(self.pitch_dir, self.split, r, self.nshard)
            if f.shape[1] != 2:
                raise UserError(
                    f"{self.pitch_dir}/{self.split}_{r}_{self.nshard}.npy has {f.shape[1]} columns, "
                    f"expected 2 (log F0, voiced flag)")
            feats.append(f)
        return feats

    def __getitem__(self, index: int) -> np.ndarray:
        """Pitch of utterance ``index`` (manifest order): (frames, 2) float32."""
        if self._feats is None:
            self._feats = self._open()
        s = int(self.offsets[index])
        return np.asarray(self._feats[self.shard_of[index]][s:s + int(self.lengths[index])], dtype=np.float32)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_feats"] = None  # memmaps are reopened in each worker process
        return state


def load_pitch_stats(path: os.PathLike | str) -> Dict[str, Any]:
    """Read a ``{split}.pitch_stats.json`` file and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"pitch statistics {path} do not exist: merge them with simple_kmeans/pitch_stats.py "
            f"(--spk-file for pitch_norm=speaker), or use pitch_norm=none|utterance")
    with open(path) as f:
        stats = json.load(f)
    g = stats.get("global") if isinstance(stats, dict) else None
    if not isinstance(g, dict) or not {"mean", "std"} <= set(g):
        raise UserError(f"{path}: expected {{'global': {{'mean', 'std', 'n'}}, 'speakers': {{...}}}}")
    stats.setdefault("speakers", {})
    stats["_path"] = str(path)
    return stats


def normalize_log_f0(pitch: np.ndarray, mode: str, stats: Optional[Dict[str, Any]] = None,
                     speaker: Optional[str] = None) -> np.ndarray:
    """Normalise column 0 (log F0) of ``pitch`` (T, 2); returns a new array.

    ``mode``: ``none``; ``global`` / ``speaker`` z-normalise with ``stats`` (speakers with fewer
    than 2 voiced frames in the statistics fall back to the global ones); ``utterance`` uses the
    utterance's own voiced frames.
    """
    out = np.array(pitch, dtype=np.float32, copy=True)
    if mode == "none":
        return out
    if mode == "utterance":
        lf0 = out[out[:, 1] > 0.5, 0]
        mean = float(lf0.mean()) if len(lf0) else 0.0
        std = float(lf0.std()) if len(lf0) > 1 else 1.0
    elif mode == "global":
        mean, std = float(stats["global"]["mean"]), float(stats["global"]["std"])
    elif mode == "speaker":
        s = stats["speakers"][speaker]
        if s.get("n", 2) < 2:
            s = stats["global"]
        mean, std = float(s["mean"]), float(s["std"])
    else:
        raise ValueError(f"unknown pitch_norm {mode!r}; choose one of {', '.join(PITCH_NORM_CHOICES)}")
    out[:, 0] = (out[:, 0] - mean) / max(std, 1e-3)
    return out


# --------------------------------------------------------------------------- length checks


def check_frame_lengths(lengths: Sequence[int], rate: float, manifest: Manifest, inds: Sequence[int],
                        sample_rate: float, source: str, tol_s: float) -> None:
    """Raise if some utterance's ``frames / rate`` differs from its audio duration by more than ``tol_s``.

    ``lengths`` are indexed by manifest position; only the positions in ``inds`` are checked. When
    most utterances disagree, the message suggests the frame rate the files actually have.
    """
    lens = np.asarray(lengths, dtype=np.float64)[list(inds)]
    audio = np.asarray([manifest.entries[i].n_samples for i in inds], dtype=np.float64) / sample_rate
    bad = np.flatnonzero(np.abs(lens / rate - audio) > tol_s)
    if len(bad) == 0:
        return
    e = manifest.entries[inds[bad[0]]]
    first = (f"first: {e.relpath} ({manifest.path}:{e.line}) has {int(lens[bad[0]])} frames = "
             f"{lens[bad[0]] / rate:.2f} s at {rate:g} Hz, audio {audio[bad[0]]:.2f} s")
    if len(bad) > len(lens) // 2:
        actual = float(np.median(lens / np.maximum(audio, 1e-9)))
        raise UserError(
            f"{source}: {len(bad)} of {len(lens)} utterances disagree with the audio durations; the frames "
            f"look like {actual:.0f} Hz, not the configured {rate:g} Hz ({first}). Fix the rate "
            f"(task.label_rate: 100 for MFCC labels, 50 for HuBERT-feature labels; task.pitch_rate) or the files")
    raise UserError(
        f"{source}: {len(bad)} of {len(lens)} utterances have a frame count that disagrees with the audio by "
        f"more than {tol_s} s ({first}); regenerate the files for this manifest")


def label_file_lengths(path: os.PathLike | str, manifest: Manifest,
                       symbols: Optional[Sequence[str]] = None, dict_path: str = "the dictionary") -> List[int]:
    """Tokens per line of a frame-label file, checking it has one line per manifest entry and, with
    ``symbols`` (the dictionary's entries), that every label is one of them: fairseq would otherwise
    train on an unknown label silently as ``<unk>``. One read and one set operation per file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label file {path} does not exist: dump and merge the k-means labels for this split")
    data = path.read_bytes()
    lines = data.splitlines()
    lengths = [len(line.split()) for line in lines]
    if len(lengths) != len(manifest):
        raise UserError(
            f"{path} has {len(lengths)} lines but {manifest.path} lists {len(manifest)} utterances: "
            f"labels must have one line per manifest line")
    if symbols is not None:
        unknown = set(data.split()) - {s.encode() for s in symbols}
        if unknown:
            for i, line in enumerate(lines):
                bad = [t for t in line.split() if t in unknown]
                if bad:
                    raise UserError(
                        f"{path}:{i + 1}: label {bad[0].decode(errors='replace')!r} is not in {dict_path} "
                        f"({len(unknown)} distinct label(s) of this file are missing there): the labels and the "
                        f"dictionary come from different k-means runs, or the dictionary is truncated; "
                        f"rewrite it with fairseq-ext-merge-labels")
    return lengths


# --------------------------------------------------------------------------- dataset


class DHubertDataset(HubertDataset):
    """:class:`fairseq.data.HubertDataset` plus speaker ids and frame-level pitch.

    Extra args (the others are HubertDataset's):
        speaker_path: ``{split}.spk`` file; needed for ``speaker_dict`` and ``pitch_norm="speaker"``.
        speaker_dict: speaker names (index = id); when given, samples carry ``spk_id``.
        pitch_dir: folder of pitch shards; when given, samples carry ``pitch``.
        pitch_split: split name of the pitch shards (default: the manifest's stem).
        pitch_rate: pitch frame rate in Hz.
        pitch_norm: one of :data:`PITCH_NORM_CHOICES`.
        pitch_stats: statistics for ``global``/``speaker`` normalisation (:func:`load_pitch_stats`).
        length_tol_s: allowed |frames / rate - audio duration| per utterance, for labels and pitch.

    The collated batch gets ``spk_id`` (B,) long, ``pitch`` (B, T_p, 2) float (zero-padded) and
    ``pitch_lengths`` (B,) long, at the top level next to ``target_list``.
    """

    def __init__(self, manifest_path: str, sample_rate: float, label_paths: List[str],
                 label_rates, pad_list, eos_list, label_processors=None,
                 max_keep_sample_size: Optional[int] = None, min_keep_sample_size: Optional[int] = None,
                 max_sample_size: Optional[int] = None, shuffle: bool = True, pad_audio: bool = False,
                 normalize: bool = False, store_labels: bool = True, random_crop: bool = False,
                 single_target: bool = False, speaker_path: Optional[str] = None,
                 speaker_dict: Optional[List[str]] = None, pitch_dir: Optional[str] = None,
                 pitch_split: Optional[str] = None, pitch_rate: float = 100.0, pitch_norm: str = "none",
                 pitch_stats: Optional[Dict[str, Any]] = None, length_tol_s: float = 0.1) -> None:
        manifest = read_manifest(manifest_path)
        inds = [i for i, e in enumerate(manifest.entries)
                if not (min_keep_sample_size is not None and e.n_samples < min_keep_sample_size)
                and not (max_keep_sample_size is not None and e.n_samples > max_keep_sample_size)]
        if not inds:
            raise UserError(f"{manifest_path}: no utterance is within the size limits "
                            f"[{min_keep_sample_size}, {max_keep_sample_size}] samples")
        rates = label_rates if isinstance(label_rates, (list, tuple)) else [label_rates] * len(label_paths)
        dicts = [getattr(p, "dictionary", None) for p in label_processors or [None] * len(label_paths)]
        for path, rate, d in zip(label_paths, rates, dicts):
            symbols = None if d is None else d.symbols[d.nspecial:]
            lengths = label_file_lengths(path, manifest, symbols,
                                         str(Path(path).parent / f"dict{Path(path).suffix}.txt"))
            if rate > 0:
                check_frame_lengths(lengths, rate, manifest, inds, sample_rate, str(path), length_tol_s)
        self.manifest_lines = [manifest.entries[i].line for i in inds]

        names = read_speaker_file(speaker_path, manifest) if speaker_path is not None else None
        self.speaker_names = [names[i] for i in inds] if names is not None else None
        self.spk_ids: Optional[np.ndarray] = None
        if speaker_dict is not None:
            if names is None:
                raise ValueError("speaker_dict needs speaker_path")
            index = {n: k for k, n in enumerate(speaker_dict)}
            ids = []
            for i in inds:
                if names[i] not in index:
                    raise UserError(
                        f"{speaker_path}:{i + 1}: speaker {names[i]!r} of {manifest.entries[i].relpath} is not in "
                        f"the speaker dictionary (dict.spk.txt): every speaker of every split must be listed there")
                ids.append(index[names[i]])
            self.spk_ids = np.asarray(ids, dtype=np.int64)

        self.pitch: Optional[PitchTable] = None
        self.pitch_inds = np.asarray(inds, dtype=np.int64)
        self.pitch_rate, self.pitch_norm, self.pitch_stats = float(pitch_rate), pitch_norm, pitch_stats
        if pitch_dir is not None:
            self._setup_pitch(pitch_dir, pitch_split or Path(manifest_path).stem, manifest, inds,
                              sample_rate, length_tol_s)
        super().__init__(
            manifest_path, sample_rate, label_paths, label_rates, pad_list, eos_list,
            label_processors=label_processors, max_keep_sample_size=max_keep_sample_size,
            min_keep_sample_size=min_keep_sample_size, max_sample_size=max_sample_size, shuffle=shuffle,
            pad_audio=pad_audio, normalize=normalize, store_labels=store_labels, random_crop=random_crop,
            single_target=single_target)
        assert len(self.sizes) == len(inds), "manifest filtering differs from HubertDataset's"
        self._last_crop: Tuple[int, List[int]] = (0, [])

    def _setup_pitch(self, pitch_dir: str, split: str, manifest: Manifest, inds: List[int],
                     sample_rate: float, tol_s: float) -> None:
        if self.pitch_norm not in PITCH_NORM_CHOICES:
            raise UserError(f"pitch_norm={self.pitch_norm!r}; choose one of {', '.join(PITCH_NORM_CHOICES)}")
        if self.pitch_rate <= 0:
            raise UserError(f"pitch_rate must be positive (50 or 100 Hz), got {self.pitch_rate}")
        table = PitchTable(pitch_dir, split)
        if len(table) != len(manifest):
            raise UserError(
                f"pitch shards {pitch_dir}/{split}_*_{table.nshard}.npy hold {len(table)} utterances but "
                f"{manifest.path} lists {len(manifest)}: dump pitch with this manifest")
        check_frame_lengths(table.lengths, self.pitch_rate, manifest, inds, sample_rate,
                            f"pitch shards {pitch_dir}/{split}_*_{table.nshard}.npy", tol_s)
        if self.pitch_norm in ("global", "speaker") and self.pitch_stats is None:
            raise UserError(f"pitch_norm={self.pitch_norm} needs pitch statistics (pitch_stats)")
        if self.pitch_norm == "speaker":
            if self.speaker_names is None:
                raise UserError("pitch_norm=speaker needs the speaker label file {split}.spk (speaker_path)")
            missing = sorted(set(self.speaker_names) - set(self.pitch_stats["speakers"]))
            if missing:
                raise UserError(
                    f"pitch statistics have no entry for speaker(s) {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''} in {self.pitch_stats.get('_path', 'the statistics file')}: "
                    f"compute them with simple_kmeans/pitch_stats.py --spk-file on a split containing "
                    f"these speakers, or use pitch_norm=global")
        self.pitch = table

    def get_pitch(self, index: int) -> torch.Tensor:
        """Normalised pitch of the whole utterance ``index``: (T_p, 2) float32."""
        raw = self.pitch[int(self.pitch_inds[index])]
        spk = self.speaker_names[index] if self.pitch_norm == "speaker" else None
        return torch.from_numpy(normalize_log_f0(raw, self.pitch_norm, self.pitch_stats, spk))

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = super().__getitem__(index)
        if self.spk_ids is not None:
            sample["spk_id"] = int(self.spk_ids[index])
        if self.pitch is not None:
            sample["pitch"] = self.get_pitch(index)
        return sample

    def collater_audio(self, audios, audio_size):
        collated, padding_mask, starts = super().collater_audio(audios, audio_size)
        self._last_crop = (audio_size, list(starts))  # read back by collater() for the pitch crop
        return collated, padding_mask, starts

    def collater_pitch(self, pitches: List[torch.Tensor], audio_size: int,
                       audio_starts: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Crop pitch like the labels: returns (B, T_p, 2) zero-padded and lengths (B,)."""
        s2f = self.pitch_rate / self.sample_rate
        starts = [int(round(s * s2f)) for s in audio_starts]
        size = int(round(audio_size * s2f))
        if not self.pad_audio:
            size = min(size, *[len(p) - s for p, s in zip(pitches, starts)])
        size = max(size, 0)
        crops = [p[s:s + size] for p, s in zip(pitches, starts)]
        lengths = torch.LongTensor([len(c) for c in crops])
        out = pitches[0].new_zeros(len(crops), int(lengths.max()) if len(crops) else 0, 2)
        for i, c in enumerate(crops):
            out[i, :len(c)] = c
        return out, lengths

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        samples = [s for s in samples if s["source"] is not None]
        batch = super().collater(samples)
        if not batch:
            return batch
        if "spk_id" in samples[0]:
            batch["spk_id"] = torch.LongTensor([s["spk_id"] for s in samples])
        if "pitch" in samples[0]:
            audio_size, starts = self._last_crop
            batch["pitch"], batch["pitch_lengths"] = self.collater_pitch(
                [s["pitch"] for s in samples], audio_size, starts)
        return batch
