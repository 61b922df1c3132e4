"""Usage: fairseq-ext-export-espnet TSV_DIR LAB_DIR SPLIT [SPLIT ...] --out-dir DIR
                                  [--n-clusters K] [--uid-style basename|relpath] [--lab-name km]

Export fairseq k-means labels (``{LAB_DIR}/{SPLIT}.km``, utterance order of ``{TSV_DIR}/{SPLIT}.tsv``)
as ESPnet ``hubert1`` / ``ssl1`` pseudo-label files:

  {out_dir}/{SPLIT}/text             uttid l1 l2 ...  (ESPnet's pseudo_labels_km{K}.txt, used as `text`)
  {out_dir}/{SPLIT}/wav.scp          uttid /absolute/path/to/audio
  {out_dir}/{SPLIT}/utt2num_samples  uttid n_samples
  {out_dir}/tokens.txt               token list: 0 .. K-1, then <unk>, then <sos/eos>

so that token index == cluster id, and ESPnet's ``--token_type word --token_list tokens.txt``
with ``num_classes: K`` reads them (see ESPnet's egs2/TEMPLATE/ssl1/README.md). Lines are sorted
by utterance id in byte order (what Kaldi-style ``utils/fix_data_dir.sh`` expects).

Utterance ids: ``basename`` (default) is the file name without extension, fairseq's convention
(``measure_teacher_quality``); ``relpath`` is the relative path without extension with "/"
replaced by "-", for corpora whose basenames repeat. Duplicate ids or ids with whitespace are
errors. K comes from ``--n-clusters``, else ``{LAB_DIR}/dict.{lab-name}.txt``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import manifest_path
from simple_kmeans.measure_quality import read_dict_size, read_label_lines

logger = logging.getLogger("export_espnet")

SPECIAL_TOKENS = ("<unk>", "<sos/eos>")


def write_token_list(path: os.PathLike | str, n_clusters: int) -> Path:
    """``0 .. K-1`` then ``<unk>`` and ``<sos/eos>``, one per line."""
    path = Path(path)
    with atomic_output(path) as f:
        f.writelines(f"{i}\n" for i in range(n_clusters))
        f.writelines(f"{t}\n" for t in SPECIAL_TOKENS)
    return path


def export_split(tsv_dir: str, lab_dir: str, split: str, out_dir: Path, n_clusters: int,
                 uid_style: str = "basename", lab_name: str = "km") -> Path:
    """Write ``text``, ``wav.scp`` and ``utt2num_samples`` of one split; returns its folder."""
    lab_path = Path(lab_dir) / f"{split}.{lab_name}"
    manifest, seqs = read_label_lines(manifest_path(tsv_dir, split), lab_path)
    uids = manifest.unique_uids(uid_style, fix="use --uid-style relpath")
    rows: Dict[str, tuple] = {}
    for i, (entry, uid, labels) in enumerate(zip(manifest.entries, uids, seqs), start=1):
        if not uid or any(c.isspace() for c in uid):
            raise UserError(f"{manifest.path}:{entry.line}: utterance id {uid!r} is empty or has "
                            f"whitespace; rename the file")
        line = " ".join(map(str, labels.tolist()))
        if len(labels) and (labels.min() < 0 or labels.max() >= n_clusters):
            raise UserError(f"{lab_path}:{i}: labels must be integers in 0..{n_clusters - 1}, got {line[:80]!r}")
        rows[uid] = (entry, line)
    order = sorted(rows, key=lambda u: u.encode("utf-8"))
    split_dir = out_dir / split
    with atomic_output(split_dir / "text") as f:
        f.writelines(f"{u} {rows[u][1]}\n" if rows[u][1] else f"{u}\n" for u in order)
    with atomic_output(split_dir / "wav.scp") as f:
        f.writelines(f"{u} {manifest.audio_path(rows[u][0])}\n" for u in order)
    with atomic_output(split_dir / "utt2num_samples") as f:
        f.writelines(f"{u} {rows[u][0].n_samples}\n" for u in order)
    logger.info("wrote ESPnet files of %s (%d utterances) to %s", split, len(order), split_dir)
    return split_dir


def main(tsv_dir: str, lab_dir: str, split: Sequence[str], out_dir: str,
         n_clusters: Optional[int] = None, uid_style: str = "basename",
         lab_name: str = "km") -> Dict[str, object]:
    """Export every split and the token list (see the module docstring).

    Returns:
        ``{"tokens": Path, "splits": {split: Path}}``.
    """
    splits: List[str] = [split] if isinstance(split, str) else list(split)
    if n_clusters is None:
        n_clusters = read_dict_size(Path(lab_dir) / f"dict.{lab_name}.txt")
        if n_clusters is None:
            raise UserError(f"K unknown: pass --n-clusters or create {lab_dir}/dict.{lab_name}.txt "
                            f"(fairseq-ext-merge-labels writes it)")
    if n_clusters < 1:
        raise UserError(f"--n-clusters must be >= 1, got {n_clusters}")
    out = Path(out_dir)
    done = {s: export_split(tsv_dir, lab_dir, s, out, n_clusters, uid_style, lab_name) for s in splits}
    tokens = write_token_list(out / "tokens.txt", n_clusters)
    logger.info("wrote %s (%d clusters + %s)", tokens, n_clusters, " ".join(SPECIAL_TOKENS))
    return {"tokens": tokens, "splits": done}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv_dir", help="folder with the {split}.tsv manifests")
    parser.add_argument("lab_dir", help="folder with the merged {split}.km labels (and dict.km.txt)")
    parser.add_argument("split", nargs="+", help="split name(s), e.g. train valid")
    parser.add_argument("--out-dir", required=True, help="output folder")
    parser.add_argument("--n-clusters", type=int, default=None,
                        help="number of clusters K (default: from LAB_DIR/dict.km.txt)")
    parser.add_argument("--uid-style", choices=["basename", "relpath"], default="basename",
                        help="how utterance ids are made from manifest paths")
    parser.add_argument("--lab-name", default="km", help="label file extension")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
