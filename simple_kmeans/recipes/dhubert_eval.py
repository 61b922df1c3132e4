"""Evaluation of a (d)HuBERT checkpoint on held-out utterances, every layer (0 = transformer input):
speaker probe accuracy, PNMI of k-means codes against phones, and a ridge pitch probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

from fairseq_ext.base.manifest import read_manifest

PROBE_SPLITS = 5


def ridge_rmse(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> float:
    """Test RMSE of a ridge regression (alpha 1, standardised inputs); ``x``: ``(N, C)``, ``y``: ``(N,)``."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_tr, y_tr)
    return float(np.sqrt(np.mean((model.predict(x_te) - y_te) ** 2)))


def evaluate(ckpt: Path, man: Path, spk_file: Path, phones: Path, pitch50: Path, stats_json: Path,
             n_clusters: int) -> Dict[int, Dict[str, float]]:
    """Per-layer speaker probe, PNMI and pitch probe on the held-out manifest (valid.tsv)."""
    from fairseq_ext.base.manifest import read_audio
    from fairseq_ext.base.shards import load_feat_shard
    from fairseq_ext.base.speakers import read_spk_file
    from fairseq_ext.encoder import ChunkedReader, load_upstream
    from fairseq_ext.label_quality import read_phones
    from fairseq_ext.probe import assign_codes, code_metrics, fit_codebook, speaker_id_probe, speaker_split

    manifest = read_manifest(man / "valid.tsv")
    speakers = read_spk_file(spk_file)
    uids = [manifest.uid(e) for e in manifest.entries]
    upstream = load_upstream(str(ckpt))
    layers = list(range(0, upstream.num_layers + 1))
    reader = ChunkedReader(upstream, layers)
    feats = [reader.extract([read_audio(manifest.audio_path(e), upstream.sample_rate, e.n_samples)])[0]
             for e in manifest.entries]  # per utterance: {layer: (T, C)}
    pitch, lengths = load_feat_shard(pitch50, "valid", 0, 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    spk_stats = json.loads(stats_json.read_text())["speakers"]
    targets = []
    for i, (e, spk) in enumerate(zip(manifest.entries, speakers)):
        p = np.asarray(pitch[offsets[i]:offsets[i + 1]])
        n = min(len(p), len(feats[i][0]))  # the same CNN grid: equal lengths
        z = (p[:n, 0] - spk_stats[spk]["mean"]) / spk_stats[spk]["std"]
        targets.append((z, p[:n, 1] > 0.5, n))
    splits = [speaker_split(speakers, 0.5, seed) for seed in range(PROBE_SPLITS)]
    phone_ref = read_phones(phones)
    out: Dict[int, Dict[str, float]] = {}
    for layer in layers:
        pooled = np.stack([f[layer].mean(0) for f in feats])
        accs = [speaker_id_probe(pooled, speakers, tr, te, seed)["spk_acc"] for seed, (tr, te) in enumerate(splits)]
        rmses = []
        for tr, te in splits:
            def frames(idx):
                x = np.concatenate([feats[i][layer][:targets[i][2]][targets[i][1]] for i in idx])
                y = np.concatenate([targets[i][0][targets[i][1]] for i in idx])
                return x, y
            rmses.append(ridge_rmse(*frames(tr), *frames(te)))
        frames_all = np.concatenate([f[layer] for f in feats]).astype(np.float32)
        centers = fit_codebook(frames_all, n_clusters, seed=0)
        codes = {u: assign_codes(f[layer], centers) for u, f in zip(uids, feats)}
        pnmi = code_metrics(codes, phone_ref, None, phone_upsample=2)["pnmi"]
        out[layer] = {"spk_acc": float(np.mean(accs)), "spk_acc_sd": float(np.std(accs)), "pnmi": pnmi,
                      "pitch_rmse": float(np.mean(rmses))}
    return out


def evaluate_to_json(ckpt: str, man: str, spk_file: str, phones: str, pitch50: str, stats_json: str,
                     n_clusters: int, json_path: str) -> None:
    """:func:`evaluate`, saved as ``{"layer": {...}}`` JSON (a resumable step's function)."""
    from fairseq_ext.base.atomic import atomic_output

    ev = evaluate(Path(ckpt), Path(man), Path(spk_file), Path(phones), Path(pitch50), Path(stats_json), n_clusters)
    with atomic_output(json_path) as f:
        json.dump({str(k): v for k, v in ev.items()}, f, indent=1)
