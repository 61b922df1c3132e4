"""Usage: python scripts/kws_sweep.py OUT_DIR [--settings A,B,C,D] [--n-mels 10,40] [--seeds 1,2]
                             [--max-update 500] [--config small] [--run-set KEY=VALUE ...]
                             [--voices 128] [--threads 1] [--jobs 1] [--quick] [--json RESULTS.json] [--force]

The trainable front-end sweep of "Understanding Audio Features via Trainable Basis Functions"
(settings A: nothing trainable, B: Mel basis, C: STFT basis, D: both; docs/speaker.md) on a
generated keyword set, with the real trainer. One command reproduces everything; reruns skip
finished runs.

  1. corpus   OUT_DIR/corpus: scripts/make_kws_corpus.py (10 keywords in confusable groups, --voices
              generated voices x 2 takes, pitch/tempo/noise variation; 16 validation and 16 test
              voices that never occur in training)
  2. training for every (setting, n_mels, seed): fairseq-hydra-train --config-dir config/kws
              --config-name CONFIG (default small.yaml: 1 padding-safe Conformer layer x 32, batch 32) with
              model.trainable_stft / model.trainable_mel / model.n_mels / common.seed, the same
              updates, batches and learning rate for all; 4 validations per run, checkpoint_best.pt
              chosen by validation accuracy. Run dirs OUT_DIR/runs/{setting}_m{n_mels}_s{seed}
              (train.log, result.json); --run-set overrides apply to every run (and change the run
              dirs' names).
  3. test     accuracy of each checkpoint_best.pt on testing_list.txt (unseen voices)

Prints a Markdown table (setting, n_mels, seed, best / final validation accuracy, test accuracy,
training seconds) and the mean +- sd over seeds per (setting, n_mels). --json saves every
number. --quick: a toy size (3 keywords, 6 voices, tiny config, 4 updates) that checks the
machinery in seconds (pick few runs, e.g. --settings A,D --n-mels 10 --seeds 1); its accuracies
mean nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(REPO))

from simple_kmeans.cli import load_script  # noqa: E402
from fairseq_ext.base.atomic import atomic_output  # noqa: E402
from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.base.errors import UserError  # noqa: E402
from fairseq_ext.base.steps import digest as signature  # noqa: E402

logger = logging.getLogger("kws_sweep")

USER_DIR = REPO / "fairseq_ext"
SETTINGS = {"A": (False, False), "B": (False, True), "C": (True, False), "D": (True, True)}
"""Front-end setting -> (trainable_stft, trainable_mel)."""
QUICK_CORPUS = {"keywords": 3, "voices": 6, "takes": 2, "valid_voices": 1, "test_voices": 1}


def sibling(name: str):
    """Another file of scripts/ as a module (scripts/ is not a package)."""
    return load_script(__file__, name)


_demo = sibling("demo_pretrain")
parse_log = _demo.parse_log  # fairseq's JSON log records of a training log
CPU_OVERRIDES = _demo.CPU_OVERRIDES


# --------------------------------------------------------------------------- one training run


def schedule_overrides(max_update: int, n_valid: int = 4) -> List[str]:
    """Validate and save every ``max_update // n_valid`` updates (and at the end), never per epoch."""
    every = max(1, max_update // n_valid)
    return [f"optimization.max_update={max_update}", f"dataset.validate_interval_updates={every}",
            f"checkpoint.save_interval_updates={every}", "dataset.validate_interval=1000000",
            "checkpoint.save_interval=1000000", "checkpoint.keep_interval_updates=1",
            "checkpoint.no_epoch_checkpoints=true", f"common.log_interval={max(1, max_update // 20)}"]


def hydra_train(run_dir: Path, config_dir: Path, config_name: str, overrides: Sequence[str],
                threads: int = 1, identity: object = None, force: bool = False,
                timeout: Optional[float] = None) -> Dict:
    """Run ``fairseq-hydra-train`` in ``run_dir`` unless ``run_dir/train.json`` shows the same run finished.

    A run dir with another or an unfinished run is removed first (runs are short: no resume).
    Returns ``{"valid": [[updates, accuracy], ...], "best_valid", "final_valid", "seconds", "ckpt"}``;
    validation accuracies in %.
    """
    done_path = run_dir / "train.json"
    sig = signature({"config": [str(config_dir), config_name], "overrides": list(overrides), "identity": identity})
    ckpt = run_dir / "checkpoints" / "checkpoint_best.pt"
    if not force and done_path.is_file() and ckpt.is_file():
        done = json.loads(done_path.read_text())
        if done.get("signature") == sig:
            logger.info("skipping %s: already trained", run_dir.name)
            return done
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    exe = shutil.which("fairseq-hydra-train")
    cmd = ([exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]) + [
        "--config-dir", str(config_dir), "--config-name", config_name, *overrides,
        f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log_path = run_dir / "train.log"
    logger.info("training %s (log: %s)", run_dir.name, log_path)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("# " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{run_dir.name}: training did not finish in {timeout:.0f} s (log: {log_path})") from None
    seconds = time.perf_counter() - start
    text = log_path.read_text()
    if proc.returncode != 0:
        raise UserError(f"{run_dir.name}: fairseq-hydra-train failed with status {proc.returncode}; last lines "
                        f"of {log_path}:\n" + "\n".join(text.splitlines()[-25:]))
    valid = [[int(float(r["valid_num_updates"])), float(r["valid_accuracy"])]
             for r in parse_log(text) if r["kind"] == "valid" and "valid_accuracy" in r]
    if not valid or not ckpt.is_file():
        raise UserError(f"{run_dir.name}: no validation accuracy or no {ckpt.name} after training; see {log_path}")
    result = {"signature": sig, "valid": valid, "best_valid": max(a for _, a in valid), "final_valid": valid[-1][1],
              "seconds": round(seconds, 1), "ckpt": str(ckpt), "command": cmd}
    with atomic_output(done_path) as f:
        json.dump(result, f, indent=1)
    return result


def evaluate(ckpt: Path, data: Path, split: str = "test", threads: int = 1, batch_size: int = 32) -> float:
    """Accuracy (%) of a ``conformer_speaker`` checkpoint on a split of ``data`` (whole utterances)."""
    import torch

    from fairseq_ext import load_model

    torch.set_num_threads(threads)
    model, _, task = load_model(str(ckpt), arg_overrides={"data": str(data)})
    task.load_dataset(split)
    dataset = task.datasets[split]
    preds = sibling("speaker_infer").predict(model, dataset, batch_size, "cpu")
    return float((preds.numpy() == dataset.labels).mean() * 100)


def train_and_test(run_dir: Path, config_dir: Path, config_name: str, overrides: Sequence[str], data: Path,
                   threads: int = 1, identity: object = None, force: bool = False, test_split: str = "test") -> Dict:
    """:func:`hydra_train`, then the test accuracy of ``checkpoint_best.pt`` (cached in ``result.json``)."""
    res = hydra_train(run_dir, config_dir, config_name, overrides, threads, identity, force)
    out_path = run_dir / "result.json"
    if out_path.is_file():
        cached = json.loads(out_path.read_text())
        if cached.get("signature") == res["signature"] and "test" in cached:
            return cached
    res = dict(res, test=evaluate(Path(res["ckpt"]), data, test_split, threads))
    with atomic_output(out_path) as f:
        json.dump(res, f, indent=1)
    return res


def run_all(jobs: Dict[str, Dict], n_parallel: int = 1) -> Dict[str, Dict]:
    """``{name: kwargs of train_and_test}`` -> ``{name: result}``, ``n_parallel`` at a time."""
    if n_parallel <= 1:
        return {name: train_and_test(**kw) for name, kw in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(n_parallel) as pool:
        futures = {name: pool.submit(train_and_test, **kw) for name, kw in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def mean_sd(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"


# --------------------------------------------------------------------------- the sweep


def report(rows: List[Dict]) -> str:
    lines = ["| setting | trainable | n_mels | seed | best valid acc | final valid acc | test acc | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        stft, mel = SETTINGS[r["setting"]]
        what = {(False, False): "-", (False, True): "Mel", (True, False): "STFT", (True, True): "STFT+Mel"}[(stft, mel)]
        lines.append(f"| {r['setting']} | {what} | {r['n_mels']} | {r['seed']} | {r['best_valid']:.1f} | "
                     f"{r['final_valid']:.1f} | {r['test']:.1f} | {r['seconds']:.0f} |")
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["n_mels"]), []).append(r)
    lines += ["", "| setting | n_mels | seeds | best valid acc | test acc |", "|---|---|---|---|---|"]
    for (setting, n_mels), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| {setting} | {n_mels} | {len(rs)} | {mean_sd([r['best_valid'] for r in rs])} | "
                     f"{mean_sd([r['test'] for r in rs])} |")
    return "\n".join(lines)


def _ints(text: str, what: str) -> List[int]:
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: give comma-separated integers") from None


def main(out_dir: str, settings: str = "A,B,C,D", n_mels: str = "10,40", seeds: str = "1,2",
         max_update: int = 500, config: str = "small", run_set: Optional[List[str]] = None, voices: int = 128,
         threads: int = 1, jobs: int = 1, quick: bool = False, json_path: Optional[str] = None,
         force: bool = False) -> Dict:
    """Run the sweep (see the module docstring); returns ``{"rows": [...], "report": str}``."""
    wanted = [s.strip().upper() for s in settings.split(",") if s.strip()]
    if not wanted or any(s not in SETTINGS for s in wanted):
        raise UserError(f"--settings {settings!r}: choose from A,B,C,D")
    mels, seed_list = _ints(n_mels, "--n-mels"), _ints(seeds, "--seeds")
    if not mels or not seed_list:
        raise UserError("--n-mels and --seeds must not be empty")
    if max_update < 1:
        raise UserError(f"--max-update must be >= 1, got {max_update}")
    if quick:
        config, max_update = "tiny", min(max_update, 4)
    config_dir = REPO / "config" / "kws"
    if not (config_dir / f"{config}.yaml").is_file():
        raise UserError(f"--config {config}: no {config_dir / (config + '.yaml')}")
    out = Path(out_dir).resolve()
    corpus_kw = dict(QUICK_CORPUS) if quick else {"voices": voices}
    corpus = sibling("make_kws_corpus").main(str(out / "corpus"), **corpus_kw)
    identity = json.loads((corpus / "corpus.json").read_text())["settings"]
    extra = list(run_set or [])
    suffix = f"_{signature([config, max_update, extra])[:6]}" if (extra or config != "small" or max_update != 500) else ""
    base = [f"task.data={corpus}", f"common.user_dir={USER_DIR}", *CPU_OVERRIDES,
            *schedule_overrides(max_update), *extra]
    job_kw: Dict[str, Dict] = {}
    for m in mels:
        for setting in wanted:
            stft, mel = SETTINGS[setting]
            for seed in seed_list:
                name = f"{setting}_m{m}_s{seed}{suffix}"
                ov = [*base, f"model.trainable_stft={str(stft).lower()}", f"model.trainable_mel={str(mel).lower()}",
                      f"model.n_mels={m}", f"common.seed={seed}"]
                job_kw[name] = dict(run_dir=out / "runs" / name, config_dir=config_dir, config_name=config,
                                    overrides=ov, data=corpus, threads=threads, identity=identity, force=force)
                job_kw[name]["_meta"] = {"setting": setting, "n_mels": m, "seed": seed}
    metas = {name: kw.pop("_meta") for name, kw in job_kw.items()}
    results = run_all(job_kw, jobs)
    rows = [{**metas[name], "run": name, **{k: results[name][k] for k in ("best_valid", "final_valid", "test",
                                                                           "seconds", "valid")}}
            for name in job_kw]
    counts = json.loads((corpus / "corpus.json").read_text())["clips"]
    head = (f"Keyword spotting, front-end settings A-D: config/kws/{config}.yaml, {max_update} updates, "
            f"corpus {corpus} ({len(identity['keywords'])} keywords, train/valid/test clips "
            f"{counts['train']}/{counts['valid']}/{counts['test']}, valid and test voices unseen in training); "
            f"accuracy in %")
    text = head + "\n\n" + report(rows)
    print(text, flush=True)
    payload = {"settings": {"settings": wanted, "n_mels": mels, "seeds": seed_list, "max_update": max_update,
                            "config": config, "set": extra, "corpus": identity}, "rows": rows, "report": text}
    if json_path:
        with atomic_output(json_path) as f:
            json.dump(payload, f, indent=1)
    return payload


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (corpus/, runs/)")
    p.add_argument("--settings", default="A,B,C,D", help="front-end settings to run (default: %(default)s)")
    p.add_argument("--n-mels", default="10,40", help="comma-separated Mel bin counts (default: %(default)s)")
    p.add_argument("--seeds", default="1,2", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--max-update", type=int, default=500, help="updates per run (default: %(default)s)")
    p.add_argument("--config", default="small", help="config/kws/CONFIG.yaml (default: %(default)s)")
    p.add_argument("--run-set", action="append", default=None, metavar="KEY=VALUE",
                   help="hydra override for every run (repeatable), e.g. model.mel_init=random")
    p.add_argument("--voices", type=int, default=128, help="generated voices in the corpus (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per training run (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="toy size (3 keywords, 6 voices): checks the machinery")
    p.add_argument("--json", dest="json_path", default=None, help="write every number to this JSON file")
    p.add_argument("--force", action="store_true", help="retrain runs that are already done")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
