"""Quality of discrete frame labels: PNMI, purity and entropies against references, label statistics.

The numbers and their key names are those of fairseq's ``examples/hubert/simple_kmeans/
measure_teacher_quality.py`` (entropies in nats there); :func:`label_statistics` needs no
references (its entropy is in bits, and says so in its key). Used by the label pipeline's quality
report (``simple_kmeans.measure_quality``) and by the layer probe (:mod:`fairseq_ext.probe`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from fairseq_ext.base.errors import UserError

EPS = 1e-8  # fairseq's guard inside log()
_NO_DIGITS = str.maketrans("", "", "0123456789")


# --------------------------------------------------------------------------- phone references


def read_phones(tsv_path: os.PathLike | str, rm_stress: bool = True) -> Dict[str, List[str]]:
    """``uid<TAB>p1,p2,...`` lines -> ``{uid: [p1, p2, ...]}`` (stress digits removed)."""
    path = Path(tsv_path)
    if not path.is_file():
        raise UserError(f"phone reference {path} does not exist (expected lines 'uid<TAB>p1,p2,...')")
    out = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise UserError(f"{path}:{i}: expected 'uid<TAB>p1,p2,...', got {line[:80]!r}")
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
        raise UserError("no utterance has both reference and label frames: check that the "
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
        raise UserError("the label files contain no labels")
    if n_clusters is None:
        n_clusters = int(allv.max()) + 1
    elif allv.max() >= n_clusters or allv.min() < 0:
        raise UserError(f"labels range over [{allv.min()}, {allv.max()}] but K={n_clusters}")
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
