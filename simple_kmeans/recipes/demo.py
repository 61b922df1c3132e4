"""The main job after the labels: pre-train dhubert_tiny on a label-pipeline demo folder and probe it.

Steps (outputs under DEMO_DIR/dhubert/, stamps in DEMO_DIR/dhubert/.stamps):
  1. speakers  speakers/{train,valid}.spk + dict.spk.txt
  2. pitch     pitch/{split}_0_1.npy/.len at 100 Hz + train.pitch_stats.json
  3. train     fairseq-hydra-train --config-name dhubert_tiny for ``max_update`` updates on CPU
               (run dir DEMO_DIR/dhubert/run; resumed or skipped by :func:`fairseq_ext.train_run.train`)
  4. probe     per layer: speaker-ID accuracy and PNMI on the training manifest (probe.json)
Then prints the report: the last validation and the probe table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.steps import Runner, file_digest, folder_lock
from fairseq_ext.paths import config_dir
from fairseq_ext.train_run import CPU_OVERRIDES, USER_DIR, epoch_schedule, train
from simple_kmeans.recipes.dhubert_inputs import (
    SPLITS, detect_label_rate, prepare_pitch, prepare_speakers, updates_per_epoch,
)
from simple_kmeans.recipes.probe_step import probe_step

logger = logging.getLogger("demo_pretrain")


def check_demo_dir(demo_dir: Path) -> Dict[str, Path]:
    """Paths of the label pipeline's demo outputs; a clear error when one is missing."""
    paths = {"manifest": demo_dir / "manifest", "labels": demo_dir / "labels", "corpus": demo_dir / "corpus"}
    needed = [paths["manifest"] / f"{s}.tsv" for s in SPLITS] + [paths["labels"] / f"{s}.km" for s in SPLITS]
    needed += [paths["labels"] / "dict.km.txt", paths["corpus"] / "speakers.tsv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise UserError(f"{demo_dir} is not a finished label-pipeline demo folder (missing {', '.join(missing)}): "
                        f"run `python -m simple_kmeans.pipeline --demo {demo_dir}` first")
    return paths


def summary_lines(valid: Optional[Dict], n_speakers: int, n_valid: Optional[int] = None,
                  spk_layer: Optional[int] = None) -> List[str]:
    """Human-readable last validation of a dhubert run on ``n_valid`` validation utterances.

    The adversary's speaker accuracy is per utterance: on a handful of utterances it moves in steps
    of ``1 / n_valid``, which the line says, with the uniform chance ``1 / n_speakers`` it is
    compared with.
    """
    if valid is None:
        return ["(no validation record in the log)"]
    g = valid.get
    on = f" on {n_valid} validation utterances" if n_valid else ""
    lines = [f"last validation (update {g('valid_num_updates', '?')}){on}: loss {g('valid_loss', '?')} bits/frame, "
             f"masked-prediction accuracy {float(g('valid_correct_m_0', float('nan'))):.4f}"]
    if "valid_spk_acc" in valid:
        acc = float(valid["valid_spk_acc"])
        where = f" (layer {spk_layer})" if spk_layer is not None else ""
        count = f"{round(acc * n_valid)} of {n_valid} utterances; " if n_valid else ""
        lines.append(f"  speaker adversary{where}: accuracy {acc:.4f} ({count}uniform chance 1/{n_speakers} = "
                     f"{1 / n_speakers:.4f}), adversary weight {g('valid_grl_lambda', '?')}")
        if n_valid and n_valid < 50:
            lines.append(f"    {n_valid} utterances: steps of {1 / n_valid:.2f}, an indication only; the probe below "
                         f"measures the speaker information of every layer")
    if "valid_pitch_rmse" in valid:
        lines.append(f"  pitch head: log-F0 RMSE {g('valid_pitch_rmse')} (speaker z-scores), "
                     f"voicing accuracy {g('valid_vuv_acc', '?')}")
    return lines


def main(demo_dir: str, max_update: int = 3000, threads: Optional[int] = None, force: bool = False,
         n_clusters: int = 50, adv_weight: Optional[float] = None) -> Dict[str, object]:
    """Speakers, pitch, dhubert_tiny pre-training and probe on a label-pipeline demo folder.

    ``adv_weight``: the adversary's final weight (``model.adv_weight``; default: the config's).

    Returns ``{"ckpt", "updates", "valid" (last valid record), "probe" (probe report), "run_dir"}``.
    """
    from omegaconf import OmegaConf

    if max_update < 1:
        raise UserError(f"--max-update must be >= 1, got {max_update}")
    demo = Path(demo_dir).resolve()
    paths = check_demo_dir(demo)
    out = demo / "dhubert"
    man, labels = paths["manifest"], paths["labels"]
    label_rate = detect_label_rate(man, labels)
    runner = Runner(out, force=force)
    with folder_lock(out, "preparing speakers and pitch", wait=True):
        spk_dir = prepare_speakers(runner, man, paths["corpus"] / "speakers.tsv", out / "speakers")
        pitch_dir = prepare_pitch(runner, man, spk_dir, out / "pitch")
    n_speakers = len((spk_dir / "dict.spk.txt").read_text().splitlines())

    overrides = [f"+data=iter{1 if label_rate == 100 else 2}", f"task.data={man}", f"task.label_dir={labels}",
                 f"task.spk_dir={spk_dir}", f"task.pitch_dir={pitch_dir}", f"common.user_dir={USER_DIR}",
                 *CPU_OVERRIDES, *([] if adv_weight is None else [f"model.adv_weight={adv_weight}"])]
    schedule = [f"model.adv_warmup_updates={max(1, max_update // 4)}",
                *epoch_schedule(max_update, updates_per_epoch(man / "train.tsv"))]
    inputs = {"labels": [file_digest(labels / f"{s}.km") for s in SPLITS],
              "manifests": [file_digest(man / f"{s}.tsv") for s in SPLITS],
              "speakers": runner.signature_of("speakers"), "pitch": runner.signature_of("pitch_stats")}
    run = train(out / "run", config_dir("pretrain"), "dhubert_tiny", overrides, max_update, inputs,
                schedule=schedule, threads=threads, force=force, name="train")
    valid = run.last("valid")

    phones = paths["corpus"] / "phones.tsv"
    print(f"\nDisentangled HuBERT demo: dhubert_tiny, {run.updates} updates on {man / 'train.tsv'} "
          f"({label_rate} Hz labels, {n_speakers} speakers){' [already trained]' if run.skipped else ''}")
    model_cfg = OmegaConf.load(config_dir("pretrain") / "dhubert_tiny.yaml").model
    n_valid = len(read_manifest(man / "valid.tsv"))
    print("\n".join(summary_lines(valid, n_speakers, n_valid, model_cfg.spk_layer)))
    print(f"\nProbe of every layer on {man / 'train.tsv'} (speaker ID: linear probe on mean-pooled features, "
          f"its chance = the majority speaker's share of the probe's test utterances, printed below; "
          f"PNMI: k-means K={n_clusters} vs phones); the speaker adversary reads layer {model_cfg.spk_layer}, "
          f"the pitch head layer {model_cfg.pitch_layer}:")
    report = probe_step(runner, run.ckpt, man / "train.tsv", spk_dir / "train.spk",
                        phones if phones.is_file() else None, out / "probe.json", n_clusters=n_clusters)
    print(f"\ncheckpoint: {run.ckpt}\nprobe JSON: {out / 'probe.json'}\ntraining curves: "
          f"tensorboard --logdir {out / 'run' / 'tblog'}  (pip install tensorboard to view them)", flush=True)
    return {"ckpt": run.ckpt, "updates": run.updates, "valid": valid, "probe": report, "run_dir": out / "run"}
