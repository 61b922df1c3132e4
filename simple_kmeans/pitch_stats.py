"""Usage: pitch_stats.py feat_dir split nshard [--spk-file LAB_DIR/{split}.spk] [--tsv-dir TSV_DIR]

Merge the per-shard pitch statistics written by dump_pitch_feature.py
({split}_{rank}_{nshard}.pitch_stats.json for every rank) into {feat_dir}/{split}.pitch_stats.json:

  {"global":   {"mean": m, "std": s, "n": n},
   "speakers": {name: {"mean": m, "std": s, "n": n}, ...}}

over the natural log of F0 of voiced frames only (std is the population standard deviation;
n counts voiced frames). The "speakers" section is written only with --spk-file, a file with one
speaker name per manifest line in manifest order (speaker_labels.py writes it). A speaker without
any voiced frame gets the global mean and std with n = 0 (and a warning).

Shards dumped with --skip-bad hold only the files they kept (their {split}_{rank}_{nshard}.skipped.tsv
reports list the others). The speaker file then has to say whose each kept utterance is, either
  * one line per kept file: speaker_labels.py run on the kept-files manifest (merge_labels.py
    --kept-manifest-dir, status --write-kept-manifest), or
  * one line per line of the manifest the shards were dumped from, given with --tsv-dir: the lines
    of the skipped files are dropped (the reports are checked against that manifest).
Any other line count is an error: a speaker is never assigned to another speaker's utterance.

Partial statistics are exact per-utterance moments merged with the parallel-variance formula,
so the result does not depend on the number of shards.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.bad_audio import count_skipped, kept_entries
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import manifest_path, read_manifest
from fairseq_ext.base.shards import feat_paths, read_lengths
from simple_kmeans.dump_pitch_feature import stats_path
from fairseq_ext.base.speakers import read_spk_file

logger = logging.getLogger("pitch_stats")

SETTINGS = ("frame_rate", "method", "f0_floor", "f0_ceil")


def output_path(feat_dir: os.PathLike | str, split: str) -> Path:
    """``{feat_dir}/{split}.pitch_stats.json``."""
    return Path(feat_dir) / f"{split}.pitch_stats.json"


def combine_moments(moments: np.ndarray) -> Dict[str, float]:
    """Merge per-utterance ``(n, mean, M2)`` rows of shape ``(U, 3)`` into ``{"mean", "std", "n"}``."""
    moments = np.asarray(moments, dtype=np.float64).reshape(-1, 3)
    n = moments[:, 0]
    total = float(n.sum())
    if total == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = float((n * moments[:, 1]).sum() / total)
    m2 = float(moments[:, 2].sum() + (n * (moments[:, 1] - mean) ** 2).sum())
    return {"mean": mean, "std": math.sqrt(max(m2, 0.0) / total), "n": int(total)}


def read_partial(feat_dir: os.PathLike | str, split: str, rank: int, nshard: int) -> dict:
    """Read and check one shard's partial statistics against its ``.len`` file."""
    path = stats_path(feat_dir, split, rank, nshard)
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: run dump_pitch_feature.py for shard {rank}/{nshard} of {split}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            partial = json.load(f)
        utts = np.asarray(partial["utterances"], dtype=np.float64).reshape(-1, 3)
        n_utts = int(partial["n_utterances"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a pitch statistics file ({e}); rerun dump_pitch_feature.py") from None
    if len(utts) != n_utts:
        raise UserError(f"{path} lists {len(utts)} utterances but says {n_utts}; rerun dump_pitch_feature.py")
    lengths = read_lengths(feat_paths(feat_dir, split, rank, nshard)[1])
    if len(lengths) != n_utts or int(lengths.sum()) != int(partial.get("n_frames", -1)):
        raise UserError(
            f"{path} does not match {feat_paths(feat_dir, split, rank, nshard)[1]} "
            f"({n_utts} utterances / {partial.get('n_frames')} frames vs {len(lengths)} / "
            f"{int(lengths.sum())}): rerun dump_pitch_feature.py for this shard"
        )
    partial["utterances"] = utts
    return partial


def shard_speakers(spk_file: os.PathLike | str, feat_dir: str, split: str, nshard: int, n_utts: int,
                   tsv_dir: Optional[str] = None) -> List[str]:
    """Speaker of each utterance the pitch shards hold, in shard order (see the module docstring).

    Args:
        spk_file: one speaker per line of the kept-files manifest, or (with ``tsv_dir``) per line
            of the manifest the shards were dumped from.
        n_utts: utterances in the shards (their ``.len`` lines).
        tsv_dir: folder with the ``{split}.tsv`` the shards were dumped from.
    """
    speakers = read_spk_file(spk_file)
    n_skipped, _ = count_skipped(feat_dir, split, nshard)
    if len(speakers) == n_utts:
        if n_skipped:
            logger.info("%s has one line per kept file (%d files were skipped): taken as made from the kept-files "
                        "manifest", spk_file, n_skipped)
        return speakers
    if tsv_dir is not None:
        manifest = read_manifest(manifest_path(tsv_dir, split))
        if len(speakers) == len(manifest):
            kept = {e.line for r in range(nshard) for e in kept_entries(manifest, nshard, r, feat_dir, split)}
            if len(kept) != n_utts:
                raise UserError(f"the pitch shards of {split} in {feat_dir} hold {n_utts} utterances but "
                                f"{manifest.path} minus their skipped files has {len(kept)}: the shards were "
                                f"dumped from another manifest; redo them")
            logger.info("dropping the %d skipped file(s) from the %d lines of %s", len(manifest) - len(kept),
                        len(speakers), spk_file)
            return [spk for e, spk in zip(manifest.entries, speakers) if e.line in kept]
    skipped = f" ({n_skipped} skipped by --skip-bad)" if n_skipped else ""
    raise UserError(
        f"{spk_file} has {len(speakers)} lines but the pitch shards of {split} hold {n_utts} utterances{skipped}: "
        f"the speaker file must list one speaker per manifest line: of the kept-files manifest (one per kept "
        f"file), or of the manifest the shards were dumped from, given with --tsv-dir")


def merge_stats(feat_dir: str, split: str, nshard: int, spk_file: Optional[str] = None,
                tsv_dir: Optional[str] = None) -> dict:
    """Merged statistics (the output file's content) of all ``nshard`` shards."""
    if nshard < 1:
        raise UserError(f"nshard must be >= 1, got {nshard}")
    partials = [read_partial(feat_dir, split, rank, nshard) for rank in range(nshard)]
    for key in SETTINGS:
        values = {p.get(key) for p in partials}
        if len(values) > 1:
            raise UserError(
                f"the shards of {split} in {feat_dir} were dumped with different {key} values "
                f"{sorted(map(str, values))}: rerun dump_pitch_feature.py for every shard with the same options"
            )
    moments = np.concatenate([p["utterances"] for p in partials])
    overall = combine_moments(moments)
    if overall["n"] == 0:
        raise UserError(
            f"no voiced frame in {split} ({len(moments)} utterances): check the audio and --f0-floor/--f0-ceil"
        )
    out: dict = {"global": overall}
    if spk_file is not None:
        speakers = shard_speakers(spk_file, feat_dir, split, nshard, len(moments), tsv_dir)
        out["speakers"] = speaker_stats(moments, speakers, overall)
    return out


def speaker_stats(moments: np.ndarray, speakers: Sequence[str], overall: Dict[str, float]) -> Dict[str, dict]:
    """Per-speaker ``{"mean", "std", "n"}``, sorted by name; voiceless speakers fall back to ``overall``."""
    names = np.asarray(speakers)
    out = {}
    for name in sorted(set(speakers)):
        stats = combine_moments(moments[names == name])
        if stats["n"] == 0:
            logger.warning("speaker %s has no voiced frame: using the global mean and std", name)
            stats = {"mean": overall["mean"], "std": overall["std"], "n": 0}
        out[name] = stats
    return out


def main(feat_dir: str, split: str, nshard: int, spk_file: Optional[str] = None,
         tsv_dir: Optional[str] = None) -> Path:
    """Write ``{feat_dir}/{split}.pitch_stats.json``; returns its path."""
    stats = merge_stats(feat_dir, split, nshard, spk_file, tsv_dir)
    path = output_path(feat_dir, split)
    with atomic_output(path) as f:
        json.dump(stats, f, indent=1, sort_keys=False)
        f.write("\n")
    g = stats["global"]
    logger.info("wrote %s: log F0 mean %.4f (%.1f Hz), std %.4f over %d voiced frames%s", path, g["mean"],
                math.exp(g["mean"]), g["std"], g["n"],
                f", {len(stats['speakers'])} speakers" if "speakers" in stats else "")
    return path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("feat_dir", help="folder with the pitch shards of dump_pitch_feature.py")
    parser.add_argument("split", help="manifest name without .tsv")
    parser.add_argument("nshard", type=int, help="number of shards the split was dumped in")
    parser.add_argument("--spk-file", default=None,
                        help="one speaker name per manifest line ({split}.spk of speaker_labels.py): "
                             "adds per-speaker statistics")
    parser.add_argument("--tsv-dir", default=None,
                        help="folder with the {split}.tsv the shards were dumped from: lets --spk-file follow it "
                             "line for line (the lines of files --skip-bad left out are dropped)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
