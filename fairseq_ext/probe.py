"""Probing frozen layer features: what speaker and phone information each layer carries.

Measures used to judge disentanglement (:func:`run_probe_report` reads a manifest and a checkpoint;
scripts/probe.py is its command line):

* speaker identification: each utterance's features are mean-pooled over time, standardised,
  and a multinomial logistic regression is trained on part of every speaker's utterances and
  tested on the rest (a deterministic split per seed). Reported with the chance level, the
  accuracy of always answering the most frequent training speaker.
* phone information of k-means codes: k-means (K clusters, k-means++ seeding, faiss Lloyd
  iterations, as the label pipeline) on frames of the layer, then PNMI, phone purity and
  cluster purity against frame-level phone references, with the definitions of fairseq's
  ``measure_teacher_quality.py`` (``simple_kmeans.measure_quality``).
* speaker purity of the codes: the same numbers with the frame's speaker as the reference
  (``spk_purity`` = sum over codes of the largest speaker share; ``spk_nmi`` = MI / H(speaker)).

All layers come out of one forward pass per utterance through :mod:`fairseq_ext.encoder`: layer L
(1-based) is what ``model.extract_features(wav, output_layer=L)`` returns; layer 0 is the
transformer's input (projected CNN features).
"""

from __future__ import annotations

import logging
import json
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_audio, read_manifest
from fairseq_ext.base.speakers import read_spk_file, speakers_from_table

logger = logging.getLogger(__name__)

FeatureFn = Callable[[int], Dict[int, np.ndarray]]
"""``extract(i)`` -> ``{layer: (T, C) float32}`` for utterance ``i``."""


# --------------------------------------------------------------------------- speaker identification


def speaker_split(speakers: Sequence[str], test_fraction: float = 0.25, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic per-speaker train/test split of utterance indices.

    Each speaker with at least two utterances gives ``max(1, round(test_fraction * n))`` of them
    (at most ``n - 1``) to the test set; speakers with one utterance are training-only.
    Returns ``(train_idx, test_idx)``, sorted.
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    names = np.asarray(speakers)
    train, test = [], []
    for name in sorted(set(speakers)):
        idx = np.flatnonzero(names == name)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(len(idx) - 1, max(1, round(test_fraction * len(idx)))) if len(idx) > 1 else 0
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def speaker_id_probe(feats: np.ndarray, speakers: Sequence[str], train_idx: np.ndarray, test_idx: np.ndarray,
                     seed: int = 0, c: float = 1.0) -> Dict[str, float]:
    """Train a linear speaker classifier on utterance vectors and test it.

    Args:
        feats: (N, C) one vector per utterance (e.g. mean-pooled layer features).
        speakers: N speaker names.
        train_idx, test_idx: utterance indices (see :func:`speaker_split`).
        c: inverse L2 regularisation strength of the logistic regression.
    Returns:
        ``{"spk_acc", "spk_chance", "n_train", "n_test", "n_speakers"}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = np.asarray(speakers)
    if len(test_idx) == 0 or len(set(names[train_idx])) < 2:
        raise UserError("the speaker probe needs at least 2 speakers with 2 or more utterances each")
    x = np.asarray(feats, dtype=np.float64)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(x[train_idx], names[train_idx])
    acc = float((clf.predict(x[test_idx]) == names[test_idx]).mean())
    train_names, counts = np.unique(names[train_idx], return_counts=True)
    majority = train_names[np.argmax(counts)]
    return {
        "spk_acc": acc,
        "spk_chance": float((names[test_idx] == majority).mean()),
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "n_speakers": int(len(train_names)),
    }


# --------------------------------------------------------------------------- k-means codes


def fit_codebook(frames: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means centers (K, C) of ``frames`` (N, C), as the label pipeline learns them."""
    from fairseq_ext.kmeans.backends import fit_faiss

    if len(frames) < n_clusters:
        raise UserError(f"k-means with {n_clusters} clusters needs at least that many frames, got "
                        f"{len(frames)}: lower --n-clusters or probe more audio")
    km, _ = fit_faiss(np.ascontiguousarray(frames, dtype=np.float32), n_clusters, seed=seed)
    return np.asarray(km.cluster_centers_, dtype=np.float32)


def assign_codes(frames: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center for each frame: (N, C), (K, C) -> (N,) int64."""
    import faiss

    if len(frames) == 0:
        return np.zeros(0, dtype=np.int64)
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(frames, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def code_metrics(codes: Dict[str, np.ndarray], phones: Optional[Dict[str, Sequence[str]]],
                 frame_speakers: Optional[Dict[str, str]], phone_upsample: int = 2) -> Dict[str, float]:
    """PNMI / purities of ``{uid: codes}`` against phones and speakers (whichever is given).

    Codes are repeated ``phone_upsample`` times to the phone frame rate (fairseq's ``--upsample``)
    and both sequences cropped to the shorter, as ``measure_teacher_quality.py`` does.
    """
    from fairseq_ext.label_quality import pad_and_upsample, quality_metrics

    out: Dict[str, float] = {}
    if phones is not None:
        hyps = {u: pad_and_upsample(c, 0, phone_upsample) for u, c in codes.items() if u in phones}
        if not hyps:
            raise UserError("no probed utterance has phone references: check that the uids in --phones "
                            "are the audio file basenames without extension")
        if len(hyps) < len(codes):
            logger.warning("%d of %d probed utterances have no phone reference; PNMI uses the other %d",
                           len(codes) - len(hyps), len(codes), len(hyps))
        m = quality_metrics({u: phones[u] for u in hyps}, hyps)
        out.update(pnmi=float(m["MI/H(ref)"]), phone_purity=float(m["ref pur"]),
                   cluster_purity=float(m["hyp pur"]))
    if frame_speakers is not None:
        refs = {u: np.full(len(c), frame_speakers[u], dtype=object) for u, c in codes.items() if len(c)}
        m = quality_metrics(refs, {u: codes[u] for u in refs})
        out.update(spk_purity=float(m["ref pur"]), spk_nmi=float(m["MI/H(ref)"]))
    return out


# --------------------------------------------------------------------------- driver


@dataclass
class ProbeOptions:
    """Settings of :func:`run_probe`."""

    n_clusters: int = 100
    kmeans_frames: int = 30000  # frames per layer kept to fit k-means (memory: frames x dim x 2 bytes x layers)
    test_fraction: float = 0.25
    seed: int = 0
    phone_upsample: int = 2
    speaker_purity: bool = False
    c: float = 1.0


def run_probe(uids: Sequence[str], extract: FeatureFn, layers: Sequence[int],
              speakers: Optional[Sequence[str]] = None, phones: Optional[Dict[str, Sequence[str]]] = None,
              options: Optional[ProbeOptions] = None, expected_frames: Optional[int] = None) -> Dict[int, Dict[str, float]]:
    """Probe every layer of ``extract``'s features.

    Args:
        uids: utterance ids, index-aligned with ``extract`` and ``speakers``.
        extract: ``extract(i)`` -> ``{layer: (T, C)}`` for every layer in ``layers``.
        speakers: speaker per utterance (enables the speaker probe / speaker purity).
        phones: ``{uid: frame-level phones}`` (enables PNMI and purities).
        expected_frames: estimated total frames (to sample k-means frames in one pass);
            when all frames fit in ``options.kmeans_frames`` codes come from the kept frames,
            otherwise the features are extracted a second time to assign codes.
    Returns:
        ``{layer: {metric: value}}``.
    """
    opt = options or ProbeOptions()
    use_kmeans = phones is not None or (opt.speaker_purity and speakers is not None)
    n = len(uids)
    if speakers is not None and len(speakers) != n:
        raise UserError(f"{len(speakers)} speaker labels for {n} utterances")
    rng = np.random.default_rng(opt.seed)
    keep_p = 1.0
    if use_kmeans and expected_frames:
        keep_p = min(1.0, opt.kmeans_frames / max(expected_frames, 1))
    pooled: Dict[int, List[np.ndarray]] = {layer: [] for layer in layers}
    kept: Dict[int, List[np.ndarray]] = {layer: [] for layer in layers}
    all_kept = keep_p >= 1.0
    lengths: List[int] = []
    for i in progress(range(n), desc="probe: features", unit="utt"):
        feats = extract(i)
        length = len(next(iter(feats.values())))
        lengths.append(length)
        mask = rng.random(length) < keep_p if not all_kept else None
        for layer in layers:
            x = feats[layer]
            pooled[layer].append(x.mean(axis=0, dtype=np.float64) if length else np.zeros(x.shape[1]))
            if use_kmeans:
                kept[layer].append((x if all_kept else x[mask]).astype(np.float16))
    results: Dict[int, Dict[str, float]] = {layer: {} for layer in layers}
    if speakers is not None:
        train_idx, test_idx = speaker_split(speakers, opt.test_fraction, opt.seed)
        for layer in layers:
            results[layer].update(speaker_id_probe(np.stack(pooled[layer]), speakers, train_idx, test_idx,
                                                   opt.seed, opt.c))
    if not use_kmeans:
        return results
    centers = {}
    for layer in layers:
        frames = np.concatenate(kept[layer]).astype(np.float32)
        logger.info("layer %d: k-means, %d clusters on %d frames", layer, opt.n_clusters, len(frames))
        centers[layer] = fit_codebook(frames, opt.n_clusters, opt.seed)
    codes: Dict[int, Dict[str, np.ndarray]] = {layer: {} for layer in layers}
    if all_kept:
        for layer in layers:
            for uid, x in zip(uids, kept[layer]):
                codes[layer][uid] = assign_codes(x, centers[layer])
    else:
        kept.clear()
        for i in progress(range(n), desc="probe: codes", unit="utt"):
            feats = extract(i)
            for layer in layers:
                codes[layer][uids[i]] = assign_codes(feats[layer], centers[layer])
    frame_speakers = dict(zip(uids, speakers)) if (opt.speaker_purity and speakers is not None) else None
    for layer in layers:
        results[layer].update(code_metrics(codes[layer], phones, frame_speakers, opt.phone_upsample))
    return results


COLUMNS = [("spk_acc", "spk acc"), ("pnmi", "PNMI"), ("phone_purity", "phn pur"),
           ("cluster_purity", "cls pur"), ("spk_purity", "spk pur"), ("spk_nmi", "spk NMI")]


def format_table(results: Dict[int, Dict[str, float]]) -> str:
    """A per-layer text table of the metrics present in ``results``."""
    present = [(k, title) for k, title in COLUMNS if any(k in r for r in results.values())]
    header = "layer " + " ".join(f"{title:>8}" for _, title in present)
    lines = [header, "-" * len(header)]
    for layer in sorted(results):
        r = results[layer]
        cells = [f"{r[k]:8.4f}" if k in r and not math.isnan(r[k]) else f"{'-':>8}" for k, _ in present]
        lines.append(f"{layer:>5} " + " ".join(cells))
    return "\n".join(lines)


def parse_layers(spec: str, n_layers: int) -> List[int]:
    """``"all"`` -> 1..n_layers; ``"0,6,12"`` -> [0, 6, 12] (checked against ``n_layers``)."""
    if spec == "all":
        return list(range(1, n_layers + 1))
    try:
        layers = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--layers must be 'all' or comma-separated integers, got {spec!r}") from None
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if not layers or bad:
        raise UserError(f"--layers {spec!r}: the model has layers 1..{n_layers} (0 = transformer input)")
    return layers


def run_probe_report(tsv: str, ckpt: str, layers: str = "all", spk_file: Optional[str] = None,
                     speakers: Optional[str] = None, phones: Optional[str] = None, phone_rate: float = 100.0,
                     n_clusters: int = 100, kmeans_frames: int = 30000, speaker_purity: bool = False,
                     test_fraction: float = 0.25, seed: int = 0, device: str = "auto",
                     json_path: Optional[str] = None, trust_checkpoint: bool = False) -> dict:
    """Probe the layers of checkpoint ``ckpt`` on the utterances of manifest ``tsv``.

    Args:
        layers: ``"all"`` or comma-separated layers (1-based; 0 = transformer input).
        spk_file / speakers: speaker per manifest line (``{split}.spk``) or a ``uid<TAB>speaker`` table.
        phones: frame-level phone references (``uid<TAB>p1,p2,...`` at ``phone_rate`` Hz).
        json_path: also write the report there.
    Returns:
        the report: ``{"checkpoint", "manifest", "n_utterances", "n_layers", "options",
        "layers": {str(layer): {metric: value}}}`` (:func:`report_text` prints it).
    """
    import torch

    from fairseq_ext.encoder import ChunkedReader, load_upstream
    from fairseq_ext.label_quality import read_phones

    if spk_file is None and speakers is None and phones is None:
        raise UserError("nothing to probe: give --spk-file or --speakers, and/or --phones")
    if speaker_purity and spk_file is None and speakers is None:
        raise UserError("--speaker-purity needs --spk-file or --speakers")
    manifest = read_manifest(tsv)
    spk: Optional[List[str]] = None
    if spk_file is not None:
        spk = read_spk_file(spk_file)
        if len(spk) != len(manifest):
            raise UserError(f"{spk_file} has {len(spk)} lines but {tsv} lists {len(manifest)} files")
    elif speakers is not None:
        spk = speakers_from_table(manifest, speakers)
    ref = read_phones(phones) if phones is not None else None

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    upstream = load_upstream(ckpt, device=device, trusted=trust_checkpoint)
    layer_list = parse_layers(layers, upstream.num_layers)
    reader = ChunkedReader(upstream, layer_list)
    model_rate = upstream.sample_rate / upstream.frame_shift
    upsample = phone_rate / model_rate
    if ref is not None and (upsample < 1 or abs(upsample - round(upsample)) > 1e-6):
        raise UserError(f"--phone-rate {phone_rate:g} Hz must be a whole multiple of the model's frame "
                        f"rate ({model_rate:g} Hz)")
    uids = [manifest.uid(e) for e in manifest.entries]

    def extract(i: int) -> Dict[int, np.ndarray]:
        e = manifest.entries[i]
        wav = read_audio(manifest.audio_path(e), upstream.sample_rate, e.n_samples, where=f"{tsv}:{e.line}")
        return reader.extract([wav])[0]

    options = ProbeOptions(n_clusters=n_clusters, kmeans_frames=kmeans_frames, test_fraction=test_fraction,
                           seed=seed, phone_upsample=int(round(upsample)), speaker_purity=speaker_purity)
    expected = sum(reader.num_frames(e.n_samples) for e in manifest.entries)
    results = run_probe(uids, extract, layer_list, spk, ref, options, expected_frames=expected)
    report = {
        "checkpoint": str(ckpt), "manifest": str(tsv), "n_utterances": len(uids),
        "options": {"n_clusters": n_clusters, "kmeans_frames": kmeans_frames, "test_fraction": test_fraction,
                    "seed": seed, "phone_rate": phone_rate, "model_frame_rate": model_rate},
        "layers": {str(layer): results[layer] for layer in layer_list},
    }
    if json_path:
        with atomic_output(json_path) as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        logger.info("wrote %s", json_path)
    report["n_layers"] = upstream.num_layers
    return report


def report_text(report: dict) -> str:
    """The header lines and per-layer table of a :func:`run_probe_report` report."""
    results = {int(layer): r for layer, r in report["layers"].items()}
    first = results[min(results)]
    lines = [f"checkpoint {report['checkpoint']}: {report.get('n_layers', '?')} layers; "
             f"{report['n_utterances']} utterances from {report['manifest']}"]
    if "spk_acc" in first:
        lines.append(f"speaker probe: {first['n_speakers']} speakers, {first['n_train']} train / "
                     f"{first['n_test']} test utterances, chance {first['spk_chance']:.4f} (majority speaker's share)")
    if any(k in first for k in ("pnmi", "spk_purity")):
        lines.append(f"k-means: {report['options']['n_clusters']} clusters per layer")
    return "\n".join(lines) + "\n" + format_table(results)
