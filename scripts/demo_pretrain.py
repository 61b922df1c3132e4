"""Usage: python scripts/demo_pretrain.py DEMO_DIR [--max-update 3000] [--grl-lambda-max L] [--threads N]
                                    [--n-clusters 50] [--force]

The main job after the labels: pre-train a small disentangled HuBERT (config/pretrain/dhubert_tiny:
speaker adversary behind a gradient-reversal layer + pitch head) on CPU and probe what its layers
keep. DEMO_DIR is the output folder of the label pipeline's demo:

    python -m simple_kmeans.pipeline --demo DEMO_DIR        # (fairseq-ext-labels --demo DEMO_DIR)
    python scripts/demo_pretrain.py DEMO_DIR

Inputs (written by the label pipeline):
  DEMO_DIR/manifest/{train,valid}.tsv   fairseq manifests
  DEMO_DIR/labels/{train,valid}.km      k-means labels (MFCC: 100 Hz, HuBERT features: 50 Hz,
  DEMO_DIR/labels/dict.km.txt           the rate is read off the label lengths)
  DEMO_DIR/corpus/speakers.tsv          uid<TAB>speaker (and corpus/phones.tsv for PNMI)

Steps (outputs under DEMO_DIR/dhubert/):
  1. speakers  speakers/{train,valid}.spk + dict.spk.txt       (simple_kmeans/speaker_labels.py)
  2. pitch     pitch/{split}_0_1.npy/.len at 100 Hz + train.pitch_stats.json
                                                 (simple_kmeans/dump_pitch_feature.py, pitch_stats.py)
  3. train     fairseq-hydra-train --config-name dhubert_tiny for --max-update updates on CPU, adversary
               strength lambda from the config or --grl-lambda-max (ramped over the first quarter of the run);
               run dir DEMO_DIR/dhubert/run (checkpoints/, train.log)
  4. probe     per layer: speaker-ID accuracy of a linear probe on mean-pooled features and PNMI of
               k-means codes against the corpus phones, on the training manifest (scripts/probe.py);
               probe.json
Then prints the report: the last validation (masked-prediction accuracy, adversary accuracy,
pitch error) and the probe table.

Reruns skip what is done: a step whose inputs and settings are unchanged (stamps in
DEMO_DIR/dhubert/.stamps) is not redone; training is skipped when checkpoint_last.pt already
holds --max-update updates and resumes from it when it holds fewer. A checkpoint trained on other
inputs or settings stops the run with a message (--force starts over).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(REPO))

from fairseq_ext.base.atomic import atomic_output  # noqa: E402
from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.base.errors import UserError  # noqa: E402
from fairseq_ext.base.manifest import read_manifest  # noqa: E402
from fairseq_ext.base.steps import digest as signature, file_digest  # noqa: E402

logger = logging.getLogger("demo_pretrain")

CONFIG_DIR = REPO / "config" / "pretrain"
USER_DIR = REPO / "fairseq_ext"
SPLITS = ("train", "valid")
PITCH_RATE = 100
LOG_RECORD = re.compile(r"\[(train_inner|train|valid)\]\[INFO\] - (\{.*\})\s*$")
CPU_OVERRIDES = ["common.cpu=true", "common.fp16=false", "dataset.num_workers=0",
                 "dataset.required_batch_size_multiple=1"]


# --------------------------------------------------------------------------- stamps


class Stamps:
    """Records, per step, a signature of its inputs and settings once its outputs are in place."""

    def __init__(self, folder: Path, force: bool = False) -> None:
        self.folder, self.force = folder, force

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str) -> Optional[str]:
        try:
            return json.loads(self.path(name).read_text()).get("signature")
        except (OSError, ValueError):
            return None

    def done(self, name: str, sig: str, outputs: Sequence[Path]) -> bool:
        ok = not self.force and self.read(name) == sig and all(Path(p).exists() for p in outputs)
        if ok:
            logger.info("skipping %s: already done", name)
        return ok

    def clear(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def finish(self, name: str, sig: str) -> None:
        with atomic_output(self.path(name)) as f:
            json.dump({"signature": sig, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold ``folder/.lock``: waits for it with ``wait``, else fails when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UserError(f"another process is {what} in {folder}; wait for it to finish") from None
        yield


# --------------------------------------------------------------------------- inputs


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


def detect_label_rate(tsv_dir: Path, label_dir: Path, split: str = "train", label: str = "km") -> int:
    """50 or 100: the frame rate whose frame counts match the labels of ``split`` (checked per utterance)."""
    from simple_kmeans.dump_pitch_feature import num_frames

    manifest = read_manifest(tsv_dir / f"{split}.tsv")
    lab_path = label_dir / f"{split}.{label}"
    lines = lab_path.read_text().splitlines()
    if len(lines) != len(manifest):
        raise UserError(f"{lab_path} has {len(lines)} lines but {manifest.path} lists {len(manifest)} files: "
                        f"the labels were made from another manifest; rerun the label pipeline")
    for rate in (100, 50):
        if all(abs(len(line.split()) - num_frames(e.n_samples, rate)) <= 2 for e, line in zip(manifest.entries, lines)):
            return rate
    e, line = manifest.entries[0], lines[0]
    raise UserError(f"{lab_path}:1: {len(line.split())} labels for {e.n_samples} samples fit neither 100 Hz "
                    f"({num_frames(e.n_samples, 100)} frames) nor 50 Hz ({num_frames(e.n_samples, 50)}) labels")


def prepare_speakers(stamps: Stamps, tsv_dir: Path, table: Path, spk_dir: Path,
                     splits: Sequence[str] = SPLITS) -> Path:
    """``{spk_dir}/{split}.spk`` + ``dict.spk.txt`` (from the first split) with speaker_labels.py."""
    from simple_kmeans import speaker_labels

    sig = signature({"table": file_digest(table), "splits": list(splits),
                     "manifests": [file_digest(tsv_dir / f"{s}.tsv") for s in splits], "dir": str(spk_dir)})
    outputs = [spk_dir / f"{s}.spk" for s in splits] + [spk_dir / "dict.spk.txt"]
    if not stamps.done("speakers", sig, outputs):
        stamps.clear("speakers")
        for f in outputs:
            f.unlink(missing_ok=True)  # a new training split rewrites the dictionary
        for i, split in enumerate(splits):
            speaker_labels.main(str(tsv_dir), split, str(spk_dir), table=str(table),
                                dict=str(spk_dir) if i > 0 else None)
        stamps.finish("speakers", sig)
    return spk_dir


def prepare_pitch(stamps: Stamps, tsv_dir: Path, spk_dir: Path, pitch_dir: Path,
                  splits: Sequence[str] = SPLITS, frame_rate: int = PITCH_RATE) -> Path:
    """Pitch shards (one per split) and ``train.pitch_stats.json`` with per-speaker statistics."""
    from simple_kmeans import dump_pitch_feature, pitch_stats

    for split in splits:
        sig = signature({"manifest": file_digest(tsv_dir / f"{split}.tsv"), "rate": frame_rate, "dir": str(pitch_dir)})
        outputs = [pitch_dir / f"{split}_0_1.{ext}" for ext in ("npy", "len")]
        if not stamps.done(f"pitch_{split}", sig, outputs):
            stamps.clear(f"pitch_{split}")
            dump_pitch_feature.main(str(tsv_dir), split, 1, 0, str(pitch_dir), frame_rate=frame_rate)
            stamps.finish(f"pitch_{split}", sig)
    spk_file = spk_dir / f"{splits[0]}.spk"
    sig = signature({"shards": stamps.read(f"pitch_{splits[0]}"), "spk": file_digest(spk_file)})
    if not stamps.done("pitch_stats", sig, [pitch_dir / f"{splits[0]}.pitch_stats.json"]):
        stamps.clear("pitch_stats")
        pitch_stats.main(str(pitch_dir), splits[0], 1, spk_file=str(spk_file))
        stamps.finish("pitch_stats", sig)
    return pitch_dir


# --------------------------------------------------------------------------- training


def parse_log(text: str) -> List[Dict]:
    """fairseq's JSON log records (``kind`` = train_inner | train | valid) from a training log."""
    out = []
    for line in text.splitlines():
        m = LOG_RECORD.search(line)
        if m:
            out.append({"kind": m.group(1), **json.loads(m.group(2))})
    return out


def last_record(records: Sequence[Dict], kind: str) -> Optional[Dict]:
    found = [r for r in records if r["kind"] == kind]
    return found[-1] if found else None


def checkpoint_updates(ckpt: Path) -> int:
    """Number of updates stored in a fairseq checkpoint (``optimizer_history[-1]["num_updates"]``)."""
    import torch

    from fairseq_ext.checkpoint import register_safe_globals

    register_safe_globals()
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        return int(state["optimizer_history"][-1]["num_updates"])
    except Exception as e:  # a half-written or foreign file: say which and what to do
        raise UserError(f"cannot read the update count of {ckpt} ({type(e).__name__}: {e}): remove it or "
                        f"rerun with --force") from None


def hydra_train_command(config_name: str, overrides: Sequence[str], config_dir: Path = CONFIG_DIR) -> List[str]:
    exe = shutil.which("fairseq-hydra-train")
    head = [exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    return head + ["--config-dir", str(config_dir), "--config-name", config_name, *overrides]


def train(stamps: Stamps, name: str, run_dir: Path, overrides: Sequence[str], max_update: int,
          inputs: Dict[str, object], config_name: str = "dhubert_tiny", threads: Optional[int] = None,
          timeout: Optional[float] = None, schedule: Sequence[str] = ()) -> Dict[str, object]:
    """Run (or resume, or skip) ``fairseq-hydra-train`` until ``checkpoint_last.pt`` holds ``max_update`` updates.

    ``overrides`` must not contain ``optimization.max_update`` or ``hydra.run.dir`` (added here).
    ``overrides`` and ``inputs`` (file digests, settings) are the run's identity: a checkpoint made
    with others is an error (``stamps.force`` removes the run dir instead). ``schedule`` overrides
    (those derived from ``max_update``: intervals, ramps) are not, so that a larger ``max_update``
    continues the run. The subprocess's output is appended to ``run_dir/train.log``.
    Returns ``{"ckpt", "updates", "records", "seconds", "skipped"}``.
    """
    ckpt = run_dir / "checkpoints" / "checkpoint_last.pt"
    sig = signature({"config": config_name, "overrides": list(overrides), "inputs": inputs})
    overrides = [*overrides, *schedule]
    with folder_lock(run_dir.parent, f"preparing {run_dir.name}", wait=True):
        if stamps.force and run_dir.exists():
            logger.info("--force: removing %s", run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, "training"):
        return _train_locked(stamps, name, run_dir, ckpt, sig, overrides, max_update, config_name, threads, timeout)


def _train_locked(stamps: Stamps, name: str, run_dir: Path, ckpt: Path, sig: str, overrides: Sequence[str],
                  max_update: int, config_name: str, threads: Optional[int],
                  timeout: Optional[float]) -> Dict[str, object]:
    if ckpt.exists() and stamps.read(name) != sig:
        raise UserError(f"{ckpt} was trained on other inputs or settings than this run's: remove {run_dir} "
                        f"or rerun with --force to start over")
    log_path = run_dir / "train.log"
    done = checkpoint_updates(ckpt) if ckpt.exists() else 0
    start, skipped = time.perf_counter(), done >= max_update
    if skipped:
        logger.info("skipping %s: %s holds %d updates (--max-update %d)", name, ckpt, done, max_update)
    else:
        stamps.finish(name, sig)  # the run's identity, so that an interrupted run resumes
        cmd = hydra_train_command(config_name, [*overrides, f"optimization.max_update={max_update}",
                                                f"hydra.run.dir={run_dir}"])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        logger.info("%s: training %s from update %d to %d (log: %s)", name, config_name, done, max_update, log_path)
        with open(log_path, "a") as log:
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            try:
                proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                raise UserError(f"{name}: training did not finish in {timeout:.0f} s; rerun to resume "
                                f"from {ckpt}") from None
        if proc.returncode != 0:
            tail = log_path.read_text().splitlines()[-25:]
            raise UserError(f"{name}: fairseq-hydra-train failed with status {proc.returncode}; last lines "
                            f"of {log_path}:\n" + "\n".join(tail))
        done = checkpoint_updates(ckpt) if ckpt.exists() else 0
        if done < max_update:
            raise UserError(f"{name}: training stopped at {done} of {max_update} updates; see {log_path}")
    records = parse_log(log_path.read_text()) if log_path.exists() else []
    return {"ckpt": ckpt, "updates": done, "records": records, "seconds": time.perf_counter() - start,
            "skipped": skipped}


def interval_overrides(max_update: int, updates_per_epoch: int) -> List[str]:
    """Log about 50 times, validate and save about 5 times per run (fairseq always does both at the end)."""
    epochs = max(1, math.ceil(max_update / max(updates_per_epoch, 1)))
    every = max(1, epochs // 5)
    return [f"common.log_interval={max(1, max_update // 50)}", f"dataset.validate_interval={every}",
            f"checkpoint.save_interval={every}"]


def updates_per_epoch(tsv: Path, max_tokens: int = 64000, max_sample_size: int = 16000) -> int:
    """Rough batches per epoch of dhubert_tiny (utterances cropped to max_sample_size)."""
    n = len(read_manifest(tsv))
    return max(1, math.ceil(n / max(1, max_tokens // max_sample_size)))


# --------------------------------------------------------------------------- probe


def load_probe_script():
    """scripts/probe.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fairseq_ext_probe_script", REPO / "scripts" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe(stamps: Stamps, ckpt: Path, tsv: Path, spk_file: Path, phones: Optional[Path], json_path: Path,
          n_clusters: int = 50) -> Dict:
    """Run scripts/probe.py (all layers) unless probe.json already belongs to this checkpoint."""
    from fairseq_ext.probe import format_table

    st = ckpt.stat()
    sig = signature({"ckpt": [str(ckpt), st.st_size, st.st_mtime_ns], "tsv": file_digest(tsv),
                     "spk": file_digest(spk_file), "phones": file_digest(phones) if phones else None,
                     "k": n_clusters})
    if stamps.done("probe", sig, [json_path]):
        report = json.loads(json_path.read_text())
        print(format_table({int(k): v for k, v in report["layers"].items()}))
        return report
    stamps.clear("probe")
    report = load_probe_script().main(str(tsv), str(ckpt), layers="all",
                                      spk_file=str(spk_file), phones=str(phones) if phones else None,
                                      n_clusters=n_clusters, json_path=str(json_path))
    stamps.finish("probe", sig)
    return report


def summary_lines(valid: Optional[Dict], n_speakers: int) -> List[str]:
    """Human-readable last validation of a dhubert run."""
    if valid is None:
        return ["(no validation record in the log)"]
    g = valid.get
    lines = [f"last validation (update {g('valid_num_updates', '?')}): loss {g('valid_loss', '?')} bits/frame, "
             f"masked-prediction accuracy {float(g('valid_correct_m_0', float('nan'))):.4f}"]
    if "valid_spk_acc" in valid:
        lines.append(f"  adversary speaker accuracy {float(valid['valid_spk_acc']):.4f} (chance {1 / n_speakers:.4f}), "
                     f"GRL lambda {g('valid_grl_lambda', '?')}")
    if "valid_pitch_rmse" in valid:
        lines.append(f"  pitch head: log-F0 RMSE {g('valid_pitch_rmse')} (speaker z-scores), "
                     f"voicing accuracy {g('valid_vuv_acc', '?')}")
    return lines


# --------------------------------------------------------------------------- main


def main(demo_dir: str, max_update: int = 3000, threads: Optional[int] = None, force: bool = False,
         n_clusters: int = 50, grl_lambda_max: Optional[float] = None) -> Dict[str, object]:
    """Speakers, pitch, dhubert_tiny pre-training and probe on a label-pipeline demo folder.

    Returns ``{"ckpt", "updates", "valid" (last valid record), "probe" (probe report), "run_dir"}``.
    """
    from omegaconf import OmegaConf

    if max_update < 1:
        raise UserError(f"--max-update must be >= 1, got {max_update}")
    demo = Path(demo_dir).resolve()
    paths = check_demo_dir(demo)
    out = demo / "dhubert"
    stamps = Stamps(out / ".stamps", force=force)
    man, labels = paths["manifest"], paths["labels"]
    label_rate = detect_label_rate(man, labels)
    with folder_lock(out, "preparing speakers and pitch", wait=True):
        spk_dir = prepare_speakers(stamps, man, paths["corpus"] / "speakers.tsv", out / "speakers")
        pitch_dir = prepare_pitch(stamps, man, spk_dir, out / "pitch")
    n_speakers = len((spk_dir / "dict.spk.txt").read_text().splitlines())

    overrides = [f"+data=iter{1 if label_rate == 100 else 2}", f"task.data={man}", f"task.label_dir={labels}",
                 f"task.spk_dir={spk_dir}", f"task.pitch_dir={pitch_dir}", f"common.user_dir={USER_DIR}",
                 *CPU_OVERRIDES, *([] if grl_lambda_max is None else [f"model.grl_lambda_max={grl_lambda_max}"])]
    schedule = [f"model.grl_warmup_updates={max(1, max_update // 4)}",
                *interval_overrides(max_update, updates_per_epoch(man / "train.tsv"))]
    inputs = {"labels": [file_digest(labels / f"{s}.km") for s in SPLITS],
              "manifests": [file_digest(man / f"{s}.tsv") for s in SPLITS],
              "speakers": stamps.read("speakers"), "pitch": stamps.read("pitch_stats")}
    run = train(stamps, "train", out / "run", overrides, max_update, inputs, threads=threads, schedule=schedule)
    valid = last_record(run["records"], "valid")

    phones = paths["corpus"] / "phones.tsv"
    print(f"\nDisentangled HuBERT demo: dhubert_tiny, {run['updates']} updates on {man / 'train.tsv'} "
          f"({label_rate} Hz labels, {n_speakers} speakers){' [already trained]' if run['skipped'] else ''}")
    print("\n".join(summary_lines(valid, n_speakers)))
    model_cfg = OmegaConf.load(CONFIG_DIR / "dhubert_tiny.yaml").model
    print(f"\nProbe of every layer on {man / 'train.tsv'} (speaker ID: linear probe on mean-pooled features, "
          f"chance ~{1 / n_speakers:.2f}; PNMI: k-means K={n_clusters} vs phones); the speaker adversary reads "
          f"layer {model_cfg.spk_layer}, the pitch head layer {model_cfg.pitch_layer}:")
    report = probe(stamps, run["ckpt"], man / "train.tsv", spk_dir / "train.spk",
                   phones if phones.is_file() else None, out / "probe.json", n_clusters=n_clusters)
    print(f"\ncheckpoint: {run['ckpt']}\nprobe JSON: {out / 'probe.json'}", flush=True)
    return {"ckpt": run["ckpt"], "updates": run["updates"], "valid": valid, "probe": report, "run_dir": out / "run"}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", help="output folder of `python -m simple_kmeans.pipeline --demo DEMO_DIR`")
    parser.add_argument("--max-update", type=int, default=3000, help="training updates (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the training process (default: inherited)")
    parser.add_argument("--n-clusters", type=int, default=50, help="k-means clusters of the PNMI probe")
    parser.add_argument("--grl-lambda-max", type=float, default=None,
                        help="final adversary strength lambda (default: config/pretrain/dhubert_tiny.yaml's, "
                             "the value docs/dhubert.md's experiment favours)")
    parser.add_argument("--force", action="store_true", help="redo every step (removes the previous run)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
