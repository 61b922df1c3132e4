"""The trainable front-end sweep (settings A-D x n_mels x seeds) on a generated keyword set, with
the real trainer (``scripts/kws_sweep.py`` documents it); also the head runs of the speaker
experiment: :func:`train_and_test` and :func:`run_all`."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.steps import Runner, Unit, digest, file_fingerprint
from fairseq_ext.paths import config_dir as find_config_dir
from fairseq_ext.train_run import CPU_OVERRIDES, USER_DIR, train, update_schedule

logger = logging.getLogger("kws_sweep")

SETTINGS = {"A": (False, False), "B": (False, True), "C": (True, False), "D": (True, True)}
"""Front-end setting -> (trainable_stft, trainable_mel)."""
QUICK_CORPUS = {"keywords": 3, "voices": 6, "takes": 2, "valid_voices": 1, "test_voices": 1}


def heldout_accuracy(ckpt: str, data: str, split: str, threads: int, json_path: str, batch_size: int = 32) -> float:
    """Accuracy (%) of a ``conformer_speaker`` checkpoint on a split of ``data`` (whole utterances),
    also written to ``json_path`` as ``{"test": accuracy}``."""
    import torch

    from fairseq_ext import load_model
    from fairseq_ext.speaker_inference import predict

    torch.set_num_threads(threads)
    model, _, task = load_model(ckpt, arg_overrides={"data": data})
    task.load_dataset(split)
    dataset = task.datasets[split]
    acc = float((predict(model, dataset, batch_size, "cpu").numpy() == dataset.labels).mean() * 100)
    with atomic_output(json_path) as f:
        json.dump({"test": acc}, f)
    return acc


def train_and_test(run_dir: Path, config_dir: Path, config_name: str, overrides: Sequence[str], max_update: int,
                   data: Path, threads: int = 1, identity: object = None, force: bool = False,
                   test_split: str = "test") -> Dict:
    """Train (or skip) a head run, then the test accuracy of its ``checkpoint_best.pt`` (a step of the run).

    Returns ``{"valid": [[updates, accuracy %], ...], "best_valid", "final_valid", "test", "seconds", "ckpt"}``.
    A run dir with a run of other settings is started over.
    """
    run = train(run_dir, config_dir, config_name, overrides, max_update, identity, threads=threads, force=force,
                restart=True)
    valid = [[int(float(r["valid_num_updates"])), float(r["valid_accuracy"])]
             for r in run.records if r["kind"] == "valid" and "valid_accuracy" in r]
    best = run_dir / "checkpoints" / "checkpoint_best.pt"
    if not valid or not best.is_file():
        raise UserError(f"{run_dir.name}: no validation accuracy or no {best.name} after training; see {run.log}")
    result_path = run_dir / "result.json"
    Runner(run_dir, force=force).run([Unit(
        "test", heldout_accuracy, {"ckpt": str(best), "data": str(data), "split": test_split, "threads": threads,
                                "json_path": str(result_path)}, [result_path], {"ckpt": file_fingerprint(best)})])
    return {"valid": valid, "best_valid": max(a for _, a in valid), "final_valid": valid[-1][1],
            "test": json.loads(result_path.read_text())["test"], "seconds": round(run.seconds, 1),
            "ckpt": str(best)}


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


def parse_ints(text: str, what: str) -> List[int]:
    """``"1,2"`` -> ``[1, 2]``; a :class:`UserError` naming the option ``what`` otherwise."""
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: give comma-separated integers") from None


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


def main(out_dir: str, settings: str = "A,B,C,D", n_mels: str = "10,40", seeds: str = "1,2",
         max_update: int = 500, config: str = "small", run_set: Optional[List[str]] = None, voices: int = 128,
         threads: int = 1, jobs: int = 1, quick: bool = False, json_path: Optional[str] = None,
         force: bool = False) -> Dict:
    """Run the sweep; returns ``{"settings", "rows": [...], "report": str}``."""
    from simple_kmeans.recipes import kws_corpus

    wanted = [s.strip().upper() for s in settings.split(",") if s.strip()]
    if not wanted or any(s not in SETTINGS for s in wanted):
        raise UserError(f"--settings {settings!r}: choose from A,B,C,D")
    mels, seed_list = parse_ints(n_mels, "--n-mels"), parse_ints(seeds, "--seeds")
    if not mels or not seed_list:
        raise UserError("--n-mels and --seeds must not be empty")
    if max_update < 1:
        raise UserError(f"--max-update must be >= 1, got {max_update}")
    if quick:
        config, max_update = "tiny", min(max_update, 4)
    config_dir = find_config_dir("kws")
    if not (config_dir / f"{config}.yaml").is_file():
        raise UserError(f"--config {config}: no {config_dir / (config + '.yaml')}")
    out = Path(out_dir).resolve()
    corpus_kw = dict(QUICK_CORPUS) if quick else {"voices": voices}
    corpus = kws_corpus.main(str(out / "corpus"), **corpus_kw)
    identity = json.loads((corpus / "corpus.json").read_text())["settings"]
    extra = list(run_set or [])
    suffix = f"_{digest([config, max_update, extra])[:6]}" if (extra or config != "small" or max_update != 500) else ""
    base = [f"task.data={corpus}", f"common.user_dir={USER_DIR}", *CPU_OVERRIDES, *update_schedule(max_update),
            *extra]
    job_kw: Dict[str, Dict] = {}
    metas: Dict[str, Dict] = {}
    for m in mels:
        for setting in wanted:
            stft, mel = SETTINGS[setting]
            for seed in seed_list:
                name = f"{setting}_m{m}_s{seed}{suffix}"
                ov = [*base, f"model.trainable_stft={str(stft).lower()}", f"model.trainable_mel={str(mel).lower()}",
                      f"model.n_mels={m}", f"common.seed={seed}"]
                job_kw[name] = dict(run_dir=out / "runs" / name, config_dir=config_dir, config_name=config,
                                    overrides=ov, max_update=max_update, data=corpus, threads=threads,
                                    identity=identity, force=force)
                metas[name] = {"setting": setting, "n_mels": m, "seed": seed}
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
