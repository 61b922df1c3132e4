"""Does the speaker adversary remove speaker identity, at what cost to masked prediction? Plain
HuBERT and disentangled HuBERT trained with the same compute on a generated corpus, then probed
on held-out utterances (``scripts/dhubert_experiment.py`` documents the steps)."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.steps import Runner, Unit, digest, file_digest, file_fingerprint, folder_lock
from fairseq_ext.paths import config_dir
from fairseq_ext.train_run import CPU_OVERRIDES, USER_DIR, epoch_schedule, train
from simple_kmeans.recipes.dhubert_eval import PROBE_SPLITS, evaluate_to_json
from simple_kmeans.recipes.dhubert_inputs import SPLITS, prepare_pitch, prepare_speakers, updates_per_epoch
from simple_kmeans.recipes.experiment_data import PLAIN, make_corpus, make_labels, write_manifests

logger = logging.getLogger("dhubert_experiment")


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


def main(out_dir: str, max_update: int = 1500, seeds: str = "1", n_speakers: int = 8, utts_per_speaker: int = 48,
         heldout_per_speaker: int = 24, n_clusters: int = 100, corpus_seed: int = 0,
         common_set: Optional[List[str]] = None, dhubert_set: Optional[List[str]] = None,
         threads: Optional[int] = 1, json_path: Optional[str] = None, force: bool = False,
         variants: str = "plain,dhubert") -> Dict:
    """Run the experiment; returns ``{"settings", "results": {run name: [per seed]}, "report"}``."""
    from omegaconf import OmegaConf

    wanted = [v for v in variants.split(",") if v]
    if not wanted or set(wanted) - {"plain", "dhubert"}:
        raise UserError(f"--variants {variants!r}: choose from plain,dhubert")
    out = Path(out_dir).resolve()
    runner = Runner(out, force=force)
    with folder_lock(out, "preparing the data", wait=True):  # parallel invocations share the data
        corpus = make_corpus(runner, out, n_speakers, utts_per_speaker, corpus_seed)
        man = write_manifests(corpus, out / "manifest", heldout_per_speaker)
        lab = make_labels(man, out, n_clusters, corpus_seed, force)
        spk_dir = prepare_speakers(runner, man, corpus / "speakers.tsv", out / "speakers")
        pitch_dir = prepare_pitch(runner, man, spk_dir, out / "pitch")
        # held-out pitch on the model's 50 Hz frame grid, for the pitch probe
        pitch50 = prepare_pitch(runner, man, spk_dir, out / "pitch50", splits=("valid",), frame_rate=50,
                                name="pitch50", stats=False)

    common = ["+data=iter1", f"task.data={man}", f"task.label_dir={lab}", f"common.user_dir={USER_DIR}",
              *CPU_OVERRIDES, *epoch_schedule(max_update, updates_per_epoch(man / "train.tsv")),
              *(common_set or [])]
    heads = [f"task.spk_dir={spk_dir}", f"task.pitch_dir={pitch_dir}", *(dhubert_set or [])]
    cfg = OmegaConf.load(config_dir("pretrain") / "dhubert_tiny.yaml")
    spk_layer = int(next((s.split("=", 1)[1] for s in (dhubert_set or []) if s.startswith("model.spk_layer=")),
                         cfg.model.spk_layer))
    # run dirs: {variant}[_{dhubert settings}][_{shared settings}]_s{seed}, so that other settings never
    # collide with earlier runs (the defaults keep the short names)
    shared = f"_{digest([max_update, common_set])[:6]}" if (max_update != 1500 or common_set) else ""
    runs = {"plain" + shared: common + PLAIN,
            "dhubert" + (f"_{digest(dhubert_set)[:6]}" if dhubert_set else "") + shared: common + heads}
    runs = {name: ov for name, ov in runs.items() if name.split("_")[0] in wanted}
    inputs = {"labels": [file_digest(lab / f"{s}.km") for s in SPLITS], "speakers": runner.signature_of("speakers"),
              "pitch": runner.signature_of("pitch_stats")}
    results: Dict[str, List[Dict]] = {}
    for seed in [int(s) for s in seeds.split(",")]:
        for name, overrides in runs.items():
            run_dir = out / "runs" / f"{name}_s{seed}"
            run = train(run_dir, config_dir("pretrain"), "dhubert_tiny", [*overrides, f"common.seed={seed}"],
                        max_update, inputs, threads=threads, force=force, name=f"train_{name}_s{seed}")
            valid = run.last("valid") or {}
            eval_path = run_dir / "eval.json"
            kw = {"ckpt": str(run.ckpt), "man": str(man), "spk_file": str(spk_dir / "valid.spk"),
                  "phones": str(corpus / "phones.tsv"), "pitch50": str(pitch50),
                  "stats_json": str(pitch_dir / "train.pitch_stats.json"), "n_clusters": n_clusters,
                  "json_path": str(eval_path)}
            runner.run([Unit(f"eval_{name}_s{seed}", evaluate_to_json, kw, [eval_path],
                             {"ckpt": file_fingerprint(run.ckpt), "splits": PROBE_SPLITS})])
            ev = json.loads(eval_path.read_text())
            train_s = run.last("train")
            results.setdefault(name, []).append({
                "seed": seed, "run_dir": str(run_dir), "eval": ev, "valid": valid,
                "mask_acc": float(valid.get("valid_correct_m_0", float("nan"))),
                "train_seconds": float(train_s.get("train_wall", "nan")) if train_s else float("nan"),
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
