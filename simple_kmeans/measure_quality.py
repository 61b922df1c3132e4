"""Usage: fairseq-ext-measure-quality TSV_DIR LAB_DIR LAB_NAME [--lab_sets valid ...]
           [--phn_dir DIR --phn_sets dev-clean dev-other] [--upsample 1] [--pad_len 0]
           [--ref_lab_dir DIR --ref_lab_name NAME] [--n-clusters K] [--json PATH]

Quality of k-means labels ``{LAB_DIR}/{set}.{LAB_NAME}`` (utterance order of ``{TSV_DIR}/{set}.tsv``).
The command line is fairseq's ``examples/hubert/measure_teacher_quality.py`` (dashed spellings
such as ``--lab-sets`` work too) and the metrics use its definitions, so numbers are comparable
with the HuBERT paper:

  phone purity   ("ref pur")   sum_z max_y p(y, z): how pure each cluster z is in phones y
  cluster purity ("hyp pur")   sum_y max_z p(y, z): how concentrated each phone is on one cluster
  H(ref), H(hyp), MI           entropies / mutual information in nats (with fairseq's 1e-8 guard)
  PNMI           ("MI/H(ref)") phone-normalised mutual information, MI / H(ref)

Phone references (``--phn_dir``; files ``{phn_dir}/{set}.tsv``, lines ``uid<TAB>p1,p2,...``, one
phone per frame, stress digits removed) are matched by utterance id = file basename without
extension, so with references the basenames of all label sets must be unique (a repeated one is
an error naming both manifest lines; the statistics below need no ids and use every line). Each
label sequence is padded with ``--pad_len`` copies of its first/last label and repeated
``--upsample`` times (use 2 for 50 Hz HuBERT labels against 100 Hz phones), then both sequences
are cropped to the shorter one. With ``--ref_lab_dir/--ref_lab_name`` the reference is
another label file instead of phones.

Without references it still reports label statistics: clusters used out of K (K from
``--n-clusters``, else ``{LAB_DIR}/dict.{LAB_NAME}.txt``, else the largest label + 1), entropy
and perplexity of the label distribution, and the average segment length (frames per run of
identical labels). The report is printed to stdout; ``--json PATH`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.label_quality import label_statistics, pad_and_upsample, quality_metrics, read_phones
from fairseq_ext.base.manifest import Manifest, read_manifest

logger = logging.getLogger("measure_quality")

UNIQUE_UID_FIX = ("utterances are matched by file basename, so basenames must be unique: rename the files, or "
                  "measure the label sets with repeated names separately")


# --------------------------------------------------------------------------- reading


def read_label_lines(tsv_path: os.PathLike | str, lab_path: os.PathLike | str,
                     as_int: bool = True) -> Tuple[Manifest, List[np.ndarray]]:
    """The manifest ``tsv_path`` and the labels of each line of ``lab_path`` (one per manifest entry).

    Labels are int64 arrays (``as_int``) or arrays of strings (any reference label file).
    """
    manifest = read_manifest(tsv_path)
    lab_path = Path(lab_path)
    if not lab_path.is_file():
        raise UserError(f"label file {lab_path} does not exist: run the labelling and merge steps")
    with open(lab_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) != len(manifest):
        raise UserError(f"{lab_path} has {len(lines)} lines but {manifest.path} lists "
                        f"{len(manifest)} files: they were not made from the same manifest")
    if as_int:
        return manifest, _parse_int_lines(lab_path, lines)
    return manifest, [np.array(line.split(), dtype=object) for line in lines]


def read_labels(tsv_path: os.PathLike | str, lab_path: os.PathLike | str, pad_len: int = 0,
                upsample: int = 1, as_int: bool = True) -> Dict[str, np.ndarray]:
    """``{uid: labels}`` for the lines of ``lab_path`` in the utterance order of manifest ``tsv_path``.

    Utterance ids are file basenames (fairseq's convention) and must be unique: a repeated one is a
    :class:`UserError` naming both manifest lines, never a silently dropped utterance.
    """
    manifest, seqs = read_label_lines(tsv_path, lab_path, as_int)
    uids = manifest.unique_uids(fix=UNIQUE_UID_FIX)
    return {uid: pad_and_upsample(labs, pad_len, upsample) for uid, labs in zip(uids, seqs)}


def _parse_int_lines(path: Path, lines: List[str]) -> List[np.ndarray]:
    """Integer labels of each line, parsed in one vectorised pass; errors name the line."""
    counts = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(" ".join(lines), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
    if values is None or len(values) != counts.sum():
        for i, line in enumerate(lines, start=1):
            try:
                [int(t) for t in line.split()]
            except ValueError:
                raise UserError(f"{path}:{i}: labels must be integers, got {line[:80]!r}") from None
        raise UserError(f"{path}: cannot parse the labels")
    return np.split(values, np.cumsum(counts)[:-1])


def _check_disjoint(seen: Dict[str, np.ndarray], new: Dict[str, np.ndarray], tsv_path: Path) -> None:
    """Refuse label sets that share an utterance id (one would silently replace the other)."""
    common = sorted(set(seen).intersection(new))
    if common:
        raise UserError(f"{tsv_path}: utterance id {common[0]!r} (and {len(common) - 1} more) is also in an "
                        f"earlier label set; {UNIQUE_UID_FIX}")


def read_dict_size(path: os.PathLike | str) -> Optional[int]:
    """Number of entries of a fairseq ``dict.*.txt``, or None if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# --------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v)


QUALITY_NAMES = {
    "ref pur": "phone purity (ref pur)", "hyp pur": "cluster purity (hyp pur)",
    "H(ref)": "H(ref), nats", "H(hyp)": "H(hyp), nats", "MI": "MI, nats",
    "MI/H(ref)": "PNMI (MI/H(ref))", "ref segL": "ref segL, frames", "hyp segL": "hyp segL, frames",
}
"""Report names of fairseq's metrics, with units (fairseq computes its entropies in nats)."""
STATS_NAMES = {"entropy (bits)": "entropy, bits", "perplexity": "perplexity (2^entropy)",
               "avg segment length": "avg segment length, frames"}
"""Report names of the label statistics, with units (entropy in bits: log2 K is its maximum)."""


def format_report(report: Dict[str, object]) -> str:
    """Readable two-column tables of a report made by :func:`main`."""
    out = []
    sections = [("stats", "Label statistics", report["labels"], STATS_NAMES)]
    if report.get("quality"):
        sections.append(("quality", "Quality against the reference (fairseq's metrics: entropies in nats)",
                         report["reference"], QUALITY_NAMES))
    for key, title, source, names in sections:
        rows = [(names.get(k, k), _fmt(v)) for k, v in report[key].items()]
        width = max(len(k) for k, _ in rows)
        out += [title, "-" * len(title), f"  ({source})"]
        out.extend(f"  {k:<{width}}  {v}" for k, v in rows)
        out.append("")
    return "\n".join(out)


def main(tsv_dir: Optional[str], lab_dir: str, lab_name: str, lab_sets: Sequence[str] = ("valid",),
         phn_dir: Optional[str] = None, phn_sets: Sequence[str] = ("dev-clean", "dev-other"),
         pad_len: int = 0, upsample: int = 1, ref_lab_dir: str = "", ref_lab_name: str = "",
         verbose: bool = False, n_clusters: Optional[int] = None,
         json_path: Optional[str] = None, quiet: bool = False) -> Dict[str, object]:
    """Compute label statistics and, with references, fairseq's quality metrics; print the report.

    Returns:
        ``{"labels": str, "reference": str | None, "stats": {...}, "quality": {...} | None}``.
    """
    tsv_dir = lab_dir if tsv_dir is None else tsv_dir
    if upsample < 1 or pad_len < 0:
        raise UserError("--upsample must be >= 1 and --pad_len >= 0")
    every: Dict[str, np.ndarray] = {}  # all label lines (statistics need no utterance ids)
    for s in lab_sets:
        manifest, seqs = read_label_lines(Path(tsv_dir) / f"{s}.tsv", Path(lab_dir) / f"{s}.{lab_name}")
        every.update((f"{manifest.path}:{e.line}", labs) for e, labs in zip(manifest.entries, seqs))
    if n_clusters is None:
        n_clusters = read_dict_size(Path(lab_dir) / f"dict.{lab_name}.txt")
    report: Dict[str, object] = {
        "labels": ", ".join(f"{lab_dir}/{s}.{lab_name}" for s in lab_sets),
        "reference": None,
        "stats": label_statistics(every, n_clusters),
        "quality": None,
    }
    refs = None
    if ref_lab_dir and ref_lab_name:
        refs = {}
        for s in lab_sets:
            labels = read_labels(Path(tsv_dir) / f"{s}.tsv", Path(ref_lab_dir) / f"{s}.{ref_lab_name}",
                                 as_int=False)
            _check_disjoint(refs, labels, Path(tsv_dir) / f"{s}.tsv")
            refs.update(labels)
        report["reference"] = f"labels {ref_lab_dir}/*.{ref_lab_name}"
    elif phn_dir:
        refs = {}
        for s in phn_sets:
            refs.update(read_phones(Path(phn_dir) / f"{s}.tsv"))
        report["reference"] = "phones " + ", ".join(f"{phn_dir}/{s}.tsv" for s in phn_sets)
    if refs is not None:
        hyps: Dict[str, np.ndarray] = {}  # matched with the references by utterance id: ids must be unique
        for s in lab_sets:
            labels = read_labels(Path(tsv_dir) / f"{s}.tsv", Path(lab_dir) / f"{s}.{lab_name}", pad_len, upsample)
            _check_disjoint(hyps, labels, Path(tsv_dir) / f"{s}.tsv")
            hyps.update(labels)
        report["quality"] = quality_metrics(refs, hyps)
        if report["quality"]["utt miss"]:
            logger.warning("%d of %d reference utterances have no labels (not in %s)",
                           report["quality"]["utt miss"], len(refs), ", ".join(lab_sets))
    if not quiet:
        print(format_report(report), flush=True)
    if json_path:
        with atomic_output(json_path) as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return report


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv_dir", help="folder with the {set}.tsv manifests")
    parser.add_argument("lab_dir", help="folder with the {set}.{lab_name} label files")
    parser.add_argument("lab_name", help="label file extension, e.g. km")
    parser.add_argument("--lab_sets", "--lab-sets", nargs="+", default=["valid"], help="label sets (splits)")
    parser.add_argument("--phn_dir", "--phn-dir", default=None,
                        help="folder with frame-level phone references {set}.tsv (uid<TAB>p1,p2,...)")
    parser.add_argument("--phn_sets", "--phn-sets", nargs="+", default=["dev-clean", "dev-other"],
                        help="phone reference sets")
    parser.add_argument("--pad_len", "--pad-len", type=int, default=0, help="padding for hypotheses")
    parser.add_argument("--upsample", type=int, default=1, help="upsample factor for hypotheses")
    parser.add_argument("--ref_lab_dir", "--ref-lab-dir", default="", help="reference label folder")
    parser.add_argument("--ref_lab_name", "--ref-lab-name", default="", help="reference label extension")
    parser.add_argument("--verbose", action="store_true", help="accepted for fairseq compatibility")
    parser.add_argument("--n-clusters", type=int, default=None, help="K for the cluster usage statistics")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
