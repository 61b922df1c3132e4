"""Usage: python scripts/dhubert_experiment.py OUT_DIR [--max-update 1500] [--seeds 1] [--n-speakers 8]
              [--utts-per-speaker 48] [--heldout-per-speaker 24] [--n-clusters 100]
              [--common-set KEY=VALUE ...] [--dhubert-set KEY=VALUE ...] [--threads 1] [--json RESULTS.json]

Does the speaker adversary remove speaker identity, at what cost to masked prediction? Plain HuBERT
and disentangled HuBERT, trained with the same compute on a generated multi-speaker corpus, then
probed on held-out utterances. One command reproduces everything (reruns skip finished steps):

  1. corpus     OUT_DIR/corpus: simple_kmeans.make_demo_corpus, --n-speakers x --utts-per-speaker
                utterances (speaker F0, formants, tilt, loudness; random per-utterance pitch shifts)
  2. manifests  OUT_DIR/manifest/train.tsv (the first utterances of each speaker) and valid.tsv (the
                last --heldout-per-speaker of each speaker: fairseq's validation set and the probe set)
  3. labels     MFCC -> k-means (faiss, --n-clusters) -> labels at 100 Hz, with the label-pipeline
                scripts (dump_mfcc_feature, learn_kmeans, dump_km_label, merge_labels)
  4. speakers, pitch (100 Hz for training, 50 Hz on the model's frame grid for the pitch probe)
  5. training   config/pretrain/dhubert_tiny (2 layers x 64, CPU), identical sizes, batches, updates,
                learning rate and seed for both variants:
                  plain    task without speakers/pitch, model heads off (spk_layer=0 pitch_layer=0),
                           criterion hubert_summable: HuBERT's loss
                  dhubert  speaker adversary (GRL) at model.spk_layer + auxiliary pitch head,
                           config defaults plus --dhubert-set overrides
                --common-set overrides apply to both. Run dirs OUT_DIR/runs/{variant}[_{hash}]_s{seed}
                (a hash of the --dhubert-set and of non-default --max-update/--common-set values).
  6. evaluation on the held-out utterances, every layer (0 = transformer input):
                spk acc    linear speaker probe (standardised mean-pooled features, logistic
                           regression), half of each speaker's held-out utterances for training, the
                           other half for testing, averaged over 5 splits; chance = 1 / speakers
                PNMI       k-means (--n-clusters) codes of the layer vs the corpus phones
                pitch RMSE ridge regression of speaker-normalised log F0 (z-score) from the frame
                           features on voiced frames, same splits (1.0 = predicting the mean)
                mask acc   masked-prediction accuracy (correct_m / count_m) of the last validation
Prints a Markdown report; --json saves every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(REPO))

from simple_kmeans.cli import load_script  # noqa: E402
from fairseq_ext.base.atomic import atomic_output  # noqa: E402
from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.base.errors import UserError  # noqa: E402
from fairseq_ext.base.manifest import read_manifest  # noqa: E402


dp = load_script(__file__, "demo_pretrain")
logger = logging.getLogger("dhubert_experiment")

PLAIN = ["task.load_speaker=false", "task.load_pitch=false", "model.spk_layer=0", "model.pitch_layer=0",
         "model.spk_condition=false",
         "criterion._name=hubert_summable", "~criterion.spk_weight", "~criterion.pitch_weight",
         "~criterion.vuv_weight"]
PROBE_SPLITS = 5


# --------------------------------------------------------------------------- data


def make_corpus(stamps, out: Path, n_speakers: int, utts: int, seed: int) -> Path:
    from simple_kmeans import make_demo_corpus

    corpus = out / "corpus"
    sig = dp.signature([n_speakers, utts, seed, str(corpus)])
    if not stamps.done("corpus", sig, [corpus / "speakers.tsv", corpus / "phones.tsv"]):
        stamps.clear("corpus")
        make_demo_corpus.main(str(corpus), n_speakers=n_speakers, utts_per_speaker=utts, seed=seed)
        stamps.finish("corpus", sig)
    return corpus


def write_manifests(corpus: Path, man: Path, heldout: int) -> Path:
    """train.tsv: all but the last ``heldout`` utterances of each speaker; valid.tsv: those."""
    import soundfile as sf

    root = (corpus / "wav").resolve()
    lines: Dict[str, List[str]] = {"train": [], "valid": []}
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        wavs = sorted(spk_dir.glob("*.wav"))
        if len(wavs) <= heldout or heldout < 2:
            raise UserError(f"{spk_dir} has {len(wavs)} utterances: need more than --heldout-per-speaker "
                            f"{heldout} (>= 2)")
        for i, wav in enumerate(wavs):
            split = "valid" if i >= len(wavs) - heldout else "train"
            lines[split].append(f"{wav.relative_to(root)}\t{sf.info(str(wav)).frames}\n")
    for split, rows in lines.items():
        text = f"{root}\n" + "".join(rows)
        path = man / f"{split}.tsv"
        if not path.is_file() or path.read_text() != text:
            with atomic_output(path) as f:
                f.write(text)
    return man


def make_labels(stamps, man: Path, out: Path, n_clusters: int, seed: int) -> Path:
    """MFCC k-means labels (100 Hz) for train and valid with the label-pipeline scripts."""
    from simple_kmeans import dump_km_label, dump_mfcc_feature, learn_kmeans, merge_labels

    feat, lab, km = out / "feat", out / "labels", out / "km.mdl"
    sig = dp.signature([dp.file_digest(man / f"{s}.tsv") for s in dp.SPLITS] + [n_clusters, seed, str(out)])
    if not stamps.done("labels", sig, [lab / "train.km", lab / "valid.km", lab / "dict.km.txt"]):
        stamps.clear("labels")
        for split in dp.SPLITS:
            dump_mfcc_feature.main(str(man), split, 1, 0, str(feat))
        learn_kmeans.main(str(feat), "train", 1, str(km), n_clusters, seed=seed, backend="faiss")
        for split in dp.SPLITS:
            dump_km_label.main(str(feat), split, str(km), 1, 0, str(lab))
            merge_labels.main(str(lab), split, 1, tsv_dir=str(man), feat_dir=str(feat), n_clusters=n_clusters)
        stamps.finish("labels", sig)
    return lab


# --------------------------------------------------------------------------- evaluation


def ridge_rmse(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> float:
    """Test RMSE of a ridge regression (alpha 1, standardised inputs)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_tr, y_tr)
    return float(np.sqrt(np.mean((model.predict(x_te) - y_te) ** 2)))


def evaluate(ckpt: Path, man: Path, spk_file: Path, phones: Path, pitch50: Path, stats_json: Path,
             n_clusters: int) -> Dict[int, Dict[str, float]]:
    """Per-layer speaker probe, PNMI and pitch probe on the held-out manifest (valid.tsv)."""
    from fairseq_ext.probe import LayerFeatureExtractor, assign_codes, code_metrics, fit_codebook, \
        speaker_id_probe, speaker_split
    from fairseq_ext.base.manifest import read_audio
    from fairseq_ext.base.shards import load_feat_shard
    from fairseq_ext.label_quality import read_phones
    from simple_kmeans.speaker_labels import read_spk_file

    manifest = read_manifest(man / "valid.tsv")
    speakers = read_spk_file(spk_file)
    uids = [manifest.uid(e) for e in manifest.entries]
    ext = LayerFeatureExtractor.from_checkpoint(str(ckpt))
    layers = list(range(0, ext.n_layers + 1))
    feats = [ext(read_audio(manifest.audio_path(e), 16000, e.n_samples), layers) for e in manifest.entries]
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


# --------------------------------------------------------------------------- report


def mean_sd(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: Dict[str, List[Dict]], n_speakers: int, spk_layer: int) -> str:
    """Markdown tables: summary at the adversary's layer, then every layer."""
    lines = ["| variant | runs | spk acc @L%d (chance %.3f) | spk acc, all layers | mask acc | PNMI @L%d | "
             "pitch RMSE @L%d | train wall s |" % (spk_layer, 1 / n_speakers, spk_layer, spk_layer),
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        ev = [r["eval"] for r in runs]
        per_layer = " / ".join(f"L{k}: {mean_sd([e[k]['spk_acc'] for e in ev])}" for k in sorted(ev[0], key=int))
        lines.append(f"| {name} | {len(runs)} | {mean_sd([e[str(spk_layer)]['spk_acc'] for e in ev])} | {per_layer} | "
                     f"{mean_sd([r['mask_acc'] for r in runs])} | {mean_sd([e[str(spk_layer)]['pnmi'] for e in ev])} | "
                     f"{mean_sd([e[str(spk_layer)]['pitch_rmse'] for e in ev])} | "
                     f"{mean_sd([r['train_seconds'] for r in runs])} |")
    lines += ["", "| variant | seed | layer | spk acc | PNMI | pitch RMSE (z) |", "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for r in runs:
            for k in sorted(r["eval"], key=int):
                e = r["eval"][k]
                lines.append(f"| {name} | {r['seed']} | {k} | {e['spk_acc']:.3f} ± {e['spk_acc_sd']:.3f} | "
                             f"{e['pnmi']:.3f} | {e['pitch_rmse']:.3f} |")
    extra = [f"- {name} s{r['seed']}: adversary valid spk_acc {r['valid'].get('valid_spk_acc')}, pitch-head RMSE "
             f"{r['valid'].get('valid_pitch_rmse')}, valid loss {r['valid'].get('valid_loss')}, run {r['run_dir']}"
             for name, runs in results.items() for r in runs]
    return "\n".join(lines + [""] + extra)


# --------------------------------------------------------------------------- main


def main(out_dir: str, max_update: int = 1500, seeds: str = "1", n_speakers: int = 8, utts_per_speaker: int = 48,
         heldout_per_speaker: int = 24, n_clusters: int = 100, corpus_seed: int = 0,
         common_set: Optional[List[str]] = None, dhubert_set: Optional[List[str]] = None,
         threads: Optional[int] = 1, json_path: Optional[str] = None, force: bool = False,
         variants: str = "plain,dhubert") -> Dict:
    """Run the experiment (see the module docstring); returns the results dictionary."""
    from omegaconf import OmegaConf

    out = Path(out_dir).resolve()
    stamps = dp.Stamps(out / ".stamps", force=force)
    with dp.folder_lock(out, "preparing the data", wait=True):  # parallel invocations share the data
        corpus = make_corpus(stamps, out, n_speakers, utts_per_speaker, corpus_seed)
        man = write_manifests(corpus, out / "manifest", heldout_per_speaker)
        lab = make_labels(stamps, man, out, n_clusters, corpus_seed)
        spk_dir = dp.prepare_speakers(stamps, man, corpus / "speakers.tsv", out / "speakers")
        pitch_dir = dp.prepare_pitch(stamps, man, spk_dir, out / "pitch")
        pitch50 = _pitch50(stamps, man, out / "pitch50")

    common = ["+data=iter1", f"task.data={man}", f"task.label_dir={lab}", f"common.user_dir={dp.USER_DIR}",
              *dp.CPU_OVERRIDES, *dp.interval_overrides(max_update, dp.updates_per_epoch(man / "train.tsv")),
              *(common_set or [])]
    heads = [f"task.spk_dir={spk_dir}", f"task.pitch_dir={pitch_dir}", *(dhubert_set or [])]
    cfg = OmegaConf.load(dp.CONFIG_DIR / "dhubert_tiny.yaml")
    spk_layer = int(next((s.split("=", 1)[1] for s in (dhubert_set or []) if s.startswith("model.spk_layer=")),
                         cfg.model.spk_layer))
    wanted = [v for v in variants.split(",") if v]
    if not wanted or set(wanted) - {"plain", "dhubert"}:
        raise UserError(f"--variants {variants!r}: choose from plain,dhubert")
    # run dirs: {variant}[_{dhubert settings}][_{shared settings}]_s{seed}, so that other settings never
    # collide with earlier runs (the defaults keep the short names)
    shared = f"_{dp.signature([max_update, common_set])[:6]}" if (max_update != 1500 or common_set) else ""
    runs = {"plain" + shared: common + PLAIN,
            "dhubert" + (f"_{dp.signature(dhubert_set)[:6]}" if dhubert_set else "") + shared: common + heads}
    runs = {name: ov for name, ov in runs.items() if name.split("_")[0] in wanted}
    inputs = {"labels": stamps.read("labels"), "speakers": stamps.read("speakers"), "pitch": stamps.read("pitch_stats")}
    results: Dict[str, List[Dict]] = {}
    for seed in [int(s) for s in seeds.split(",")]:
        for name, overrides in runs.items():
            run_dir = out / "runs" / f"{name}_s{seed}"
            run = dp.train(stamps, f"train_{name}_s{seed}", run_dir, [*overrides, f"common.seed={seed}"],
                           max_update, inputs, threads=threads)
            valid = dp.last_record(run["records"], "valid") or {}
            eval_path = run_dir / "eval.json"
            st = run["ckpt"].stat()
            sig = dp.signature([str(run["ckpt"]), st.st_size, st.st_mtime_ns, n_clusters, PROBE_SPLITS])
            if stamps.done(f"eval_{name}_s{seed}", sig, [eval_path]):
                ev = json.loads(eval_path.read_text())
            else:
                ev = {str(k): v for k, v in evaluate(run["ckpt"], man, spk_dir / "valid.spk", corpus / "phones.tsv",
                                                     pitch50, pitch_dir / "train.pitch_stats.json", n_clusters).items()}
                with atomic_output(eval_path) as f:
                    json.dump(ev, f, indent=1)
                stamps.finish(f"eval_{name}_s{seed}", sig)
            train_s = [r for r in run["records"] if r["kind"] == "train"]
            results.setdefault(name, []).append({
                "seed": seed, "run_dir": str(run_dir), "eval": ev, "valid": valid,
                "mask_acc": float(valid.get("valid_correct_m_0", float("nan"))),
                "train_seconds": float(train_s[-1].get("train_wall", "nan")) if train_s else float("nan"),
                "overrides": [*overrides, f"common.seed={seed}"]})
    text = report(results, n_speakers, spk_layer)
    print(text, flush=True)
    payload = {"settings": {"max_update": max_update, "seeds": seeds, "n_speakers": n_speakers,
                            "utts_per_speaker": utts_per_speaker, "heldout_per_speaker": heldout_per_speaker,
                            "n_clusters": n_clusters, "common_set": common_set, "dhubert_set": dhubert_set},
               "results": results, "report": text}
    if json_path:
        with atomic_output(json_path) as f:
            json.dump(payload, f, indent=1, default=str)
    return payload


def _pitch50(stamps, man: Path, pitch50: Path) -> Path:
    """Held-out pitch on the model's 50 Hz frame grid (for the pitch probe)."""
    from simple_kmeans import dump_pitch_feature

    sig = dp.signature([dp.file_digest(man / "valid.tsv"), str(pitch50)])
    if not stamps.done("pitch50", sig, [pitch50 / "valid_0_1.npy", pitch50 / "valid_0_1.len"]):
        stamps.clear("pitch50")
        dump_pitch_feature.main(str(man), "valid", 1, 0, str(pitch50), frame_rate=50)
        stamps.finish("pitch50", sig)
    return pitch50


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (corpus, labels, runs, results)")
    p.add_argument("--max-update", type=int, default=1500, help="updates per training run (default: %(default)s)")
    p.add_argument("--seeds", default="1", help="comma-separated training seeds, one run per variant each")
    p.add_argument("--n-speakers", type=int, default=8)
    p.add_argument("--utts-per-speaker", type=int, default=48)
    p.add_argument("--heldout-per-speaker", type=int, default=24, help="utterances per speaker in valid.tsv")
    p.add_argument("--n-clusters", type=int, default=100, help="k-means clusters of the labels and the PNMI probe")
    p.add_argument("--corpus-seed", type=int, default=0, help="seed of the corpus and of k-means")
    p.add_argument("--common-set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                   help="hydra overrides for both variants (several after one flag, or the flag repeated)")
    p.add_argument("--dhubert-set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                   help="hydra overrides for the dhubert variant only (several after one flag, or the flag "
                        "repeated), e.g. model.grl_lambda_max=2 model.spk_adversary=reverse")
    p.add_argument("--variants", default="plain,dhubert", help="which variants to train and evaluate")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each training (default 1)")
    p.add_argument("--json", dest="json_path", default=None, help="write all results here")
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
