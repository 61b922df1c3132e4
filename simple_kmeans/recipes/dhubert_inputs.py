"""The inputs of a disentangled-HuBERT run besides manifests and labels: speaker labels, pitch
targets with per-speaker statistics, and the label rate, as resumable steps (:class:`Runner` units).

Outputs, for manifests ``{train,valid}.tsv``:
  SPK_DIR/{split}.spk + dict.spk.txt          (simple_kmeans.speaker_labels; dictionary from train)
  PITCH_DIR/{split}_0_1.npy/.len at 100 Hz + train.pitch_stats.json   (dump_pitch_feature, pitch_stats)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.frames import frames_at_rate
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.steps import Runner, Unit, file_digest
from simple_kmeans.dump_pitch_feature import DEFAULT_FRAME_RATE

SPLITS = ("train", "valid")
PITCH_RATE = DEFAULT_FRAME_RATE  # 100 Hz: the pitch_rate of the shipped dhubert configs


def make_speaker_labels(tsv_dir: str, table: str, spk_dir: str, splits: List[str]) -> None:
    """``{spk_dir}/{split}.spk`` for every split and ``dict.spk.txt`` from the first (speaker_labels)."""
    from simple_kmeans import speaker_labels

    for f in [Path(spk_dir) / f"{s}.spk" for s in splits] + [Path(spk_dir) / "dict.spk.txt"]:
        f.unlink(missing_ok=True)  # a new training split rewrites the dictionary
    for i, split in enumerate(splits):
        speaker_labels.main(tsv_dir, split, spk_dir, table=table, dict=spk_dir if i > 0 else None)


def prepare_speakers(runner: Runner, tsv_dir: Path, table: Path, spk_dir: Path,
                     splits: Sequence[str] = SPLITS) -> Path:
    """Step ``speakers``: speaker labels of ``splits`` from the ``uid<TAB>speaker`` ``table``."""
    outputs = [spk_dir / f"{s}.spk" for s in splits] + [spk_dir / "dict.spk.txt"]
    inputs = {"table": file_digest(table), "manifests": [file_digest(tsv_dir / f"{s}.tsv") for s in splits]}
    runner.run([Unit("speakers", make_speaker_labels, {"tsv_dir": str(tsv_dir), "table": str(table),
                                                       "spk_dir": str(spk_dir), "splits": list(splits)},
                     outputs, inputs)])
    return spk_dir


def prepare_pitch(runner: Runner, tsv_dir: Path, spk_dir: Path, pitch_dir: Path,
                  splits: Sequence[str] = SPLITS, frame_rate: int = PITCH_RATE, name: str = "pitch",
                  stats: bool = True) -> Path:
    """Steps ``{name}_{split}`` (one pitch shard per split) and ``{name}_stats`` (per-speaker statistics
    of the first split, with ``stats``)."""
    from simple_kmeans import dump_pitch_feature, pitch_stats

    for split in splits:  # one step per split
        runner.run([Unit(f"{name}_{split}", dump_pitch_feature.main,
                         {"tsv_dir": str(tsv_dir), "split": split, "nshard": 1, "rank": 0,
                          "feat_dir": str(pitch_dir), "frame_rate": frame_rate},
                         [pitch_dir / f"{split}_0_1.{ext}" for ext in ("npy", "len")],
                         {"manifest": file_digest(tsv_dir / f"{split}.tsv")})])
    if stats:
        spk_file = spk_dir / f"{splits[0]}.spk"
        runner.run([Unit(f"{name}_stats", pitch_stats.main,
                         {"feat_dir": str(pitch_dir), "split": splits[0], "nshard": 1, "spk_file": str(spk_file)},
                         [pitch_dir / f"{splits[0]}.pitch_stats.json"],
                         {"shards": runner.signature_of(f"{name}_{splits[0]}"), "spk": file_digest(spk_file)})])
    return pitch_dir


def detect_label_rate(tsv_dir: Path, label_dir: Path, split: str = "train", label: str = "km") -> int:
    """50 or 100: the frame rate whose frame counts match the labels of ``split`` (checked per utterance)."""
    manifest = read_manifest(tsv_dir / f"{split}.tsv")
    lab_path = label_dir / f"{split}.{label}"
    lines = lab_path.read_text().splitlines()
    if len(lines) != len(manifest):
        raise UserError(f"{lab_path} has {len(lines)} lines but {manifest.path} lists {len(manifest)} files: "
                        f"the labels were made from another manifest; rerun the label pipeline")
    for rate in (100, 50):
        if all(abs(len(line.split()) - frames_at_rate(e.n_samples, rate)) <= 2
               for e, line in zip(manifest.entries, lines)):
            return rate
    e, line = manifest.entries[0], lines[0]
    raise UserError(f"{lab_path}:1: {len(line.split())} labels for {e.n_samples} samples fit neither 100 Hz "
                    f"({frames_at_rate(e.n_samples, 100)} frames) nor 50 Hz ({frames_at_rate(e.n_samples, 50)}) "
                    f"labels")


def updates_per_epoch(tsv: Path, max_tokens: int = 64000, max_sample_size: int = 16000) -> int:
    """Rough batches per epoch of dhubert_tiny (utterances cropped to max_sample_size)."""
    n = len(read_manifest(tsv))
    return max(1, math.ceil(n / max(1, max_tokens // max_sample_size)))
