"""Usage: fairseq-ext-merge-labels LAB_DIR SPLIT NSHARD [--tsv-dir DIR] [--feat-dir DIR]
                                 [--n-clusters K | --km-path MODEL] [--kept-manifest-dir DIR]

Merge the label shards ``{LAB_DIR}/{SPLIT}_{rank}_{NSHARD}.km`` (rank order) into
``{LAB_DIR}/{SPLIT}.km`` and write the fairseq dictionary ``{LAB_DIR}/dict.km.txt``
(``i 1`` for every cluster i in 0..K-1), the two files ``fairseq-hydra-train`` reads with
``task.label_dir=LAB_DIR task.labels='["km"]'``.

This is fairseq's ``cat {split}_*_{nshard}.km > {split}.km`` with checks that ``cat`` lacks:
  * a missing shard, an empty line, a non-integer or out-of-range label is an error naming the file
    and line (always on);
  * the manifest and feature checks below also run without their options when their files are in
    LAB_DIR (``{SPLIT}.tsv``, ``{SPLIT}_{rank}_{NSHARD}.len``: fairseq's layout with one data folder);
  * with ``--tsv-dir``, each shard must have exactly as many lines as its part of
    ``{tsv-dir}/{SPLIT}.tsv`` (fairseq's shard ranges), so the labels line up with the audio;
    with ``--feat-dir`` too, minus the files that --skip-bad dumps left out (the shards'
    ``{SPLIT}_{rank}_{NSHARD}.skipped.tsv`` reports in FEAT_DIR);
  * with ``--feat-dir``, every utterance must have as many labels as its feature frames
    (``{feat-dir}/{SPLIT}_{rank}_{NSHARD}.len``).
Skipped files: ``--kept-manifest-dir DIR`` (needs --tsv-dir and --feat-dir) writes DIR/SPLIT.tsv,
the manifest minus the skipped files, line for line aligned with the merged labels: train with
``task.data=DIR`` (and make speaker labels from it). The log says how many files were skipped.
K comes from ``--n-clusters``, else from the k-means model's ``cluster_centers_``
(``--km-path``), else from the largest label + 1 (with a warning: clusters never used in this
split would be missing, and another split could get a different dictionary).
Both outputs are written to temporary names and renamed, so a rerun rewrites them (never appends).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.bad_audio import count_skipped, kept_entries, write_kept_manifest
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import manifest_path, read_manifest
from fairseq_ext.base.shards import feat_paths, label_path, read_lengths, shard_range

logger = logging.getLogger("merge_labels")

BLOCK_LINES = 20000  # lines parsed at once


def n_clusters_from_model(km_path: str) -> int:
    """Number of clusters of a saved k-means model (``cluster_centers_`` of a joblib file)."""
    from fairseq_ext.kmeans.backends import load_centers

    return int(load_centers(km_path).shape[0])


def _parse_block(path: Path, first_line: int, lines: List[bytes]) -> np.ndarray:
    """All labels of ``lines`` as int64; errors name the offending line."""
    text = b" ".join(lines).decode("ascii", errors="replace")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
    expected = sum(len(line.split()) for line in lines)
    if values is None or len(values) != expected:
        for i, line in enumerate(lines):
            for tok in line.split():
                if not tok.lstrip(b"-").isdigit():
                    raise UserError(
                        f"{path}:{first_line + i}: {tok.decode(errors='replace')!r} is not an integer label")
        raise UserError(f"{path}: cannot parse labels near line {first_line}")
    return values


def scan_label_file(path: Path) -> Dict[str, object]:
    """Check a ``.km`` file: ``{"lengths": (N,) labels per line, "min": int, "max": int}`` (None if empty)."""
    if not path.is_file():
        raise UserError(f"label shard {path} does not exist: run dump_km_label for this shard")
    lines = path.read_bytes().splitlines()
    lengths = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    empty = np.nonzero(lengths == 0)[0]
    if len(empty):
        raise UserError(f"{path}:{int(empty[0]) + 1}: an empty line ({len(empty)} in this file): every utterance "
                        f"needs its labels (fairseq would fail on it later); redo dump_km_label for this shard")
    lo, hi = None, None
    for start in range(0, len(lines), BLOCK_LINES):
        values = _parse_block(path, start + 1, lines[start:start + BLOCK_LINES])
        if len(values):
            lo = int(values.min()) if lo is None else min(lo, int(values.min()))
            hi = int(values.max()) if hi is None else max(hi, int(values.max()))
    if lo is not None and lo < 0:
        raise UserError(f"{path}: negative label {lo}")
    return {"lengths": lengths, "min": lo, "max": hi}


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def write_dict(lab_dir: os.PathLike | str, n_clusters: int, name: str = "km") -> Path:
    """Write ``{lab_dir}/dict.{name}.txt`` with ``i 1`` for i in 0..K-1 (atomically)."""
    if n_clusters < 1:
        raise UserError(f"the number of clusters must be >= 1, got {n_clusters}")
    path = Path(lab_dir) / f"dict.{name}.txt"
    with atomic_output(path) as f:
        f.writelines(f"{i} 1\n" for i in range(n_clusters))
    return path


def main(lab_dir: str, split: str, nshard: int, tsv_dir: Optional[str] = None,
         feat_dir: Optional[str] = None, n_clusters: Optional[int] = None,
         km_path: Optional[str] = None, kept_manifest_dir: Optional[str] = None) -> Dict[str, object]:
    """Merge shards and write the dictionary (see the module docstring).

    Returns:
        ``{"labels": Path, "dict": Path, "n_utts": int, "n_frames": int, "n_clusters": int,
        "n_skipped": int, "skipped_reports": [Path], "kept_manifest": Path | None}``.
    """
    lab_dir_p = Path(lab_dir)
    if tsv_dir is None and manifest_path(lab_dir_p, split).is_file():  # labels beside their manifest
        tsv_dir = str(lab_dir_p)
        logger.info("checking line counts against %s", manifest_path(lab_dir_p, split))
    if feat_dir is None and nshard >= 1 and all(feat_paths(lab_dir_p, split, r, nshard)[1].is_file()
                                                for r in range(nshard)):
        feat_dir = str(lab_dir_p)  # features dumped into the label folder
        logger.info("checking labels per utterance against %s/%s_*_%d.len", lab_dir_p, split, nshard)
    if kept_manifest_dir and not (tsv_dir and feat_dir):
        raise UserError("--kept-manifest-dir needs --tsv-dir (the manifest the features were dumped from) "
                        "and --feat-dir (where the dumps listed the skipped files)")
    manifest = read_manifest(manifest_path(tsv_dir, split)) if tsv_dir else None
    if manifest is not None:
        shard_range(len(manifest), nshard, 0)  # validates nshard against the manifest
    elif nshard < 1:
        raise UserError(f"nshard must be >= 1, got {nshard}")
    shards = [label_path(lab_dir_p, split, r, nshard) for r in range(nshard)]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise UserError(f"missing label shard(s): {', '.join(missing)}; run dump_km_label "
                        f"for these ranks (nshard={nshard}) first")
    n_skipped, reports = count_skipped(feat_dir, split, nshard) if feat_dir else (0, [])

    scans = []
    for rank, path in enumerate(shards):
        scan = scan_label_file(path)
        n = len(scan["lengths"])
        if manifest is not None:
            start, end = shard_range(len(manifest), nshard, rank)
            kept = (kept_entries(manifest, nshard, rank, feat_dir, split) if feat_dir
                    else manifest.entries[start:end])
            if n != len(kept):
                left_out = f" minus {end - start - len(kept)} skipped" if len(kept) != end - start else ""
                hint = ("" if feat_dir else "; if the features were dumped with --skip-bad, pass --feat-dir so "
                        "that the skipped files are counted")
                raise UserError(
                    f"{path} has {n} lines but shard {rank}/{nshard} of {manifest.path} has "
                    f"{len(kept)} utterances (lines {manifest.entries[start].line}-"
                    f"{manifest.entries[end - 1].line}{left_out}): the labels "
                    f"were made from another manifest or nshard; redo the features and labels{hint}")
        if feat_dir is not None:
            len_path = feat_paths(feat_dir, split, rank, nshard)[1]
            frames = read_lengths(len_path)
            if len(frames) != n:
                raise UserError(f"{path} has {n} lines but {len_path} has {len(frames)}")
            bad = np.nonzero(frames != scan["lengths"])[0]
            if len(bad):
                i = int(bad[0])
                raise UserError(
                    f"{path}:{i + 1}: {int(scan['lengths'][i])} labels but {len_path}:{i + 1} says "
                    f"{int(frames[i])} frames ({len(bad)} utterances differ): redo dump_km_label")
        scans.append(scan)

    max_label = max((s["max"] for s in scans if s["max"] is not None), default=None)
    if max_label is None:
        raise UserError(f"label shards of {split} in {lab_dir_p} contain no labels")
    if n_clusters is None and km_path:
        n_clusters = n_clusters_from_model(km_path)
    if n_clusters is None:
        n_clusters = max_label + 1
        logger.warning("K not given (--n-clusters / --km-path): using the largest label + 1 = %d; "
                       "clusters unused in %s would be missing from dict.km.txt", n_clusters, split)
    elif max_label >= n_clusters:
        worst = next(p for p, s in zip(shards, scans) if s["max"] == max_label)
        raise UserError(f"{worst}: label {max_label} is out of range for K={n_clusters} clusters")

    out = lab_dir_p / f"{split}.km"
    with atomic_output(out, "wb") as f:
        for path in shards:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
            if path.stat().st_size and not _ends_with_newline(path):
                f.write(b"\n")  # `cat` would glue this shard's last line to the next shard's first
    n_utts = sum(len(s["lengths"]) for s in scans)
    n_frames = int(sum(int(s["lengths"].sum()) for s in scans))
    dict_path = write_dict(lab_dir_p, n_clusters)
    logger.info("wrote %s (%d utterances, %d frames) and %s (K=%d)", out, n_utts, n_frames,
                dict_path, n_clusters)
    kept_manifest = None
    if kept_manifest_dir:
        kept_manifest = write_kept_manifest(tsv_dir, split, nshard, feat_dir, kept_manifest_dir)
    if n_skipped:
        logger.warning("%d bad file(s) were left out by the --skip-bad dumps (listed in %s): %s", n_skipped,
                       ", ".join(map(str, reports)),
                       f"train on {kept_manifest}, whose lines match {out}" if kept_manifest else
                       f"{out} does not match {split}.tsv line for line; write the matching manifest with "
                       f"--tsv-dir, --feat-dir and --kept-manifest-dir")
    return {"labels": out, "dict": dict_path, "n_utts": n_utts, "n_frames": n_frames,
            "n_clusters": n_clusters, "n_skipped": n_skipped, "skipped_reports": reports,
            "kept_manifest": kept_manifest}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab_dir", help="folder with {split}_{rank}_{nshard}.km (outputs go here too)")
    parser.add_argument("split", help="split name, e.g. train")
    parser.add_argument("nshard", type=int, help="number of shards")
    parser.add_argument("--tsv-dir", default=None,
                        help="folder with {split}.tsv: check each shard's line count against it")
    parser.add_argument("--feat-dir", default=None,
                        help="folder with the feature shards: check labels per utterance against .len")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--n-clusters", type=int, default=None, help="number of k-means clusters K")
    group.add_argument("--km-path", default=None, help="k-means model: K is read from it")
    parser.add_argument("--kept-manifest-dir", default=None, metavar="DIR",
                        help="write DIR/SPLIT.tsv: the manifest of --tsv-dir minus the files --skip-bad dumps "
                             "left out (listed in --feat-dir), aligned with the merged labels")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
