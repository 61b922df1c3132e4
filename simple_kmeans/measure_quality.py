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
extension. Each label sequence is padded with ``--pad_len`` copies of its first/last label and
repeated ``--upsample`` times (use 2 for 50 Hz HuBERT labels against 100 Hz phones), then both
sequences are cropped to the shorter one. With ``--ref_lab_dir/--ref_lab_name`` the reference is
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
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from simple_kmeans.common import PipelineError, atomic_output, read_manifest, run_cli

logger = logging.getLogger("measure_quality")

EPS = 1e-8  # fairseq's guard inside log()
_NO_DIGITS = str.maketrans("", "", "0123456789")


# --------------------------------------------------------------------------- reading


def read_phones(tsv_path: os.PathLike | str, rm_stress: bool = True) -> Dict[str, List[str]]:
    """``uid<TAB>p1,p2,...`` lines -> ``{uid: [p1, p2, ...]}`` (stress digits removed)."""
    path = Path(tsv_path)
    if not path.is_file():
        raise PipelineError(f"phone reference {path} does not exist (expected lines 'uid<TAB>p1,p2,...')")
    out = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise PipelineError(f"{path}:{i}: expected 'uid<TAB>p1,p2,...', got {line[:80]!r}")
            phones = parts[1].rstrip()
            if rm_stress:  # digits removed from every phone, as fairseq does (AH0 -> AH)
                phones = phones.translate(_NO_DIGITS)
            out[parts[0]] = phones.split(",")
    return out


def pad_and_upsample(labels: np.ndarray, pad_len: int = 0, upsample: int = 1) -> np.ndarray:
    """Repeat the first/last label ``pad_len`` times at each end, then each label ``upsample`` times."""
    if pad_len and len(labels):
        labels = np.concatenate([np.repeat(labels[:1], pad_len), labels, np.repeat(labels[-1:], pad_len)])
    return np.repeat(labels, upsample) if upsample != 1 else labels


def read_labels(tsv_path: os.PathLike | str, lab_path: os.PathLike | str, pad_len: int = 0,
                upsample: int = 1, as_int: bool = True) -> Dict[str, np.ndarray]:
    """``{uid: labels}`` for the lines of ``lab_path`` in the utterance order of manifest ``tsv_path``.

    Labels are int64 arrays (``as_int``) or arrays of strings (any reference label file).
    """
    manifest = read_manifest(tsv_path)
    lab_path = Path(lab_path)
    if not lab_path.is_file():
        raise PipelineError(f"label file {lab_path} does not exist: run the labelling and merge steps")
    out = {}
    with open(lab_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) != len(manifest):
        raise PipelineError(f"{lab_path} has {len(lines)} lines but {manifest.path} lists "
                            f"{len(manifest)} files: they were not made from the same manifest")
    uids = [manifest.uid(e) for e in manifest.entries]
    if as_int:
        seqs = _parse_int_lines(lab_path, lines)
    else:
        seqs = [np.array(line.split(), dtype=object) for line in lines]
    for uid, labs in zip(uids, seqs):
        out[uid] = pad_and_upsample(labs, pad_len, upsample)
    return out


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
                raise PipelineError(f"{path}:{i}: labels must be integers, got {line[:80]!r}") from None
        raise PipelineError(f"{path}: cannot parse the labels")
    return np.split(values, np.cumsum(counts)[:-1])


def read_dict_size(path: os.PathLike | str) -> Optional[int]:
    """Number of entries of a fairseq ``dict.*.txt``, or None if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# --------------------------------------------------------------------------- metrics


def avg_segment_length(seqs: Iterable[Sequence]) -> float:
    """Frames per segment (maximal run of identical labels), over all sequences."""
    n_frames = n_segs = 0
    for seq in seqs:
        seq = np.asarray(seq)
        if len(seq) == 0:
            continue
        n_frames += len(seq)
        n_segs += 1 + int(np.count_nonzero(seq[1:] != seq[:-1]))
    return n_frames / n_segs if n_segs else float("nan")


def joint_distribution(uid2refs: Dict[str, Sequence], uid2hyps: Dict[str, Sequence]) -> Dict[str, object]:
    """Joint distribution p(ref, hyp) over frames of the utterances in both dicts (min-cropped).

    Returns:
        ``{"p_xy": (R, H) float64 over the refs/hyps that occur, "frames": int, "frame_diff": int,
        "missing": [uids of refs without hyps]}``.
    """
    pairs_ref, pairs_hyp, missing = [], [], []
    frame_diff = 0
    for uid, ref in uid2refs.items():
        if uid not in uid2hyps:
            missing.append(uid)
            continue
        ref, hyp = np.asarray(ref), np.asarray(uid2hyps[uid])
        frame_diff += abs(len(ref) - len(hyp))
        n = min(len(ref), len(hyp))
        pairs_ref.append(ref[:n])
        pairs_hyp.append(hyp[:n])
    if not pairs_ref or sum(len(r) for r in pairs_ref) == 0:
        raise PipelineError("no utterance has both reference and label frames: check that the "
                            "utterance ids (file basenames) of the references and manifests match")
    _, refs = np.unique(np.concatenate(pairs_ref), return_inverse=True)  # codes of sorted values
    _, hyps = np.unique(np.concatenate(pairs_hyp), return_inverse=True)
    refs, hyps = refs.ravel().astype(np.int64), hyps.ravel().astype(np.int64)
    n_hyp = int(hyps.max()) + 1
    counts = np.bincount(refs * n_hyp + hyps, minlength=(int(refs.max()) + 1) * n_hyp)
    counts = counts.reshape(-1, n_hyp).astype(np.float64)
    tot = int(counts.sum())
    return {"p_xy": counts / counts.sum(), "frames": tot, "frame_diff": frame_diff, "missing": missing}


def entropy(p: np.ndarray) -> float:
    """``-sum p log(p + 1e-8)`` in nats (fairseq's formula)."""
    return float(-(p * np.log(p + EPS)).sum())


def quality_metrics(uid2refs: Dict[str, Sequence], uid2hyps: Dict[str, Sequence]) -> Dict[str, object]:
    """fairseq's ``measure_teacher_quality`` numbers, under its key names."""
    joint = joint_distribution(uid2refs, uid2hyps)
    p = joint["p_xy"]
    p_ref, p_hyp = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    mi = float((p * np.log(p / (p_ref @ p_hyp) + EPS)).sum())
    h_ref, h_hyp = entropy(p_ref), entropy(p_hyp)
    return {
        "ref pur": float(p.max(axis=0).sum()),
        "hyp pur": float(p.max(axis=1).sum()),
        "H(ref)": h_ref,
        "H(hyp)": h_hyp,
        "MI": mi,
        "MI/H(ref)": mi / h_ref if h_ref > 0 else float("nan"),
        "ref segL": avg_segment_length(uid2refs.values()),
        "hyp segL": avg_segment_length(uid2hyps.values()),
        "p_xy shape": list(p.shape),
        "frm tot": joint["frames"],
        "frm diff": joint["frame_diff"],
        "utt tot": len(uid2refs),
        "utt miss": len(joint["missing"]),
    }


def label_statistics(uid2labs: Dict[str, np.ndarray], n_clusters: Optional[int] = None) -> Dict[str, object]:
    """Cluster usage and distribution statistics of integer labels (no references needed)."""
    seqs = [np.asarray(s, dtype=np.int64) for s in uid2labs.values()]
    allv = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    if len(allv) == 0:
        raise PipelineError("the label files contain no labels")
    if n_clusters is None:
        n_clusters = int(allv.max()) + 1
    elif allv.max() >= n_clusters or allv.min() < 0:
        raise PipelineError(f"labels range over [{allv.min()}, {allv.max()}] but K={n_clusters}")
    counts = np.bincount(allv, minlength=n_clusters)
    p = counts[counts > 0] / len(allv)
    h_bits = float(-(p * np.log2(p)).sum())
    used = int(np.count_nonzero(counts))
    return {
        "utterances": len(seqs),
        "frames": int(len(allv)),
        "K": int(n_clusters),
        "clusters used": used,
        "usage": used / n_clusters,
        "entropy (bits)": h_bits,
        "normalized entropy": h_bits / math.log2(n_clusters) if n_clusters > 1 else 0.0,
        "perplexity": 2.0 ** h_bits,
        "largest cluster share": float(counts.max() / len(allv)),
        "avg segment length": avg_segment_length(seqs),
    }


# --------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v)


QUALITY_NAMES = {
    "ref pur": "phone purity (ref pur)", "hyp pur": "cluster purity (hyp pur)",
    "MI/H(ref)": "PNMI (MI/H(ref))",
}


def format_report(report: Dict[str, object]) -> str:
    """Readable two-column tables of a report made by :func:`main`."""
    out = []
    sections = [("stats", "Label statistics", report["labels"], {})]
    if report.get("quality"):
        sections.append(("quality", "Quality against the reference", report["reference"], QUALITY_NAMES))
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
        raise PipelineError("--upsample must be >= 1 and --pad_len >= 0")
    raw = {}
    for s in lab_sets:
        raw.update(read_labels(Path(tsv_dir) / f"{s}.tsv", Path(lab_dir) / f"{s}.{lab_name}"))
    hyps = {uid: pad_and_upsample(labs, pad_len, upsample) for uid, labs in raw.items()}
    if n_clusters is None:
        n_clusters = read_dict_size(Path(lab_dir) / f"dict.{lab_name}.txt")
    report: Dict[str, object] = {
        "labels": ", ".join(f"{lab_dir}/{s}.{lab_name}" for s in lab_sets),
        "reference": None,
        "stats": label_statistics(raw, n_clusters),
        "quality": None,
    }
    refs = None
    if ref_lab_dir and ref_lab_name:
        refs = {}
        for s in lab_sets:
            refs.update(read_labels(Path(tsv_dir) / f"{s}.tsv", Path(ref_lab_dir) / f"{s}.{ref_lab_name}",
                                    as_int=False))
        report["reference"] = f"labels {ref_lab_dir}/*.{ref_lab_name}"
    elif phn_dir:
        refs = {}
        for s in phn_sets:
            refs.update(read_phones(Path(phn_dir) / f"{s}.tsv"))
        report["reference"] = "phones " + ", ".join(f"{phn_dir}/{s}.tsv" for s in phn_sets)
    if refs is not None:
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
