"""Usage: fairseq-ext-evaluate --upstreams A.pt,B.pt [--names hubert,dhubert] [--tasks pr,sid,ks]
       --pr-data DIR --sid-data DIR [--ks-data DIR] [--probe-tsv TSV --probe-phones PHONES --probe-speakers TABLE]
       [--seeds 1,2,3] [--out eval] [--pr-updates 200] [--sid-updates 200] [--ks-updates 200]

Judge frozen upstreams the SUPERB way and write one report: for every upstream (a checkpoint, or an
upstream name the encoder registry loads) and every task, a small downstream head is trained per seed
through ``fairseq-hydra-train`` (:func:`fairseq_ext.train_run.train`):

* ``pr``: phone recognition (task ``phone_recognition``, config ``downstream/pr_tiny``); data: a folder
  with ``{train,valid}.tsv``, ``{train,valid}.phn`` and ``dict.phn.txt`` (``fairseq-ext-timit-prep`` or
  ``fairseq-ext-collapse-phones`` write it). Metric: PER (%) of the last validation.
* ``sid``: speaker identification (task ``speaker_classification``, ``task.input_type=ssl``, config
  ``speaker/tiny``); data: ``train.tsv`` + ``train.lbl`` (speaker per line; valid is a seeded hold-out
  unless ``valid.tsv`` exists). Metric: accuracy (%) of the last validation.
* ``ks``: keyword spotting (the same task on ``kws/tiny``); data: the same layout or a folder-per-keyword
  tree. Metric: accuracy (%).

Every head reads a weighted sum of all the upstream's layers (learned softmax weights), the upstream stays
frozen. With ``--probe-tsv`` the layers are also probed (:func:`fairseq_ext.probe.run_probe_report`:
per-layer linear speaker-probe accuracy and PNMI of k-means codes against frame phones), one forward
pass per utterance per upstream.

Speed: phone recognition reads each utterance's upstream layers once (``--feature-cache disk``, the
default: ``OUT/cache/NAME/``, one ``(L, T, C)`` float32 ``.npy`` per utterance, 4 * (L) * C bytes per frame,
shared by all seeds and reruns; see :mod:`fairseq_ext.data.feature_cache`); the probe makes one pass
per upstream. The speaker tasks train on random crops and run the upstream on each.

Outputs in ``--out``: ``report.md`` and ``report.json`` (mean +- sd over seeds per upstream and task),
``layers.png`` (per-layer speaker accuracy and PNMI, one line per upstream), ``runs/NAME/TASK/seedS/``
(each training run: checkpoints, ``train.log``) and ``probe/NAME.json``. A rerun skips finished runs and
probes (stamps), redoes those whose inputs or settings changed, and rewrites the report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.steps import digest, file_digest, read_stamp, write_stamp

logger = logging.getLogger("fairseq_ext.evaluate")


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: its hydra config, how the upstream is set, what data it needs and its metric."""

    config_group: str
    config_name: str
    upstream_key: str  # the override that names the upstream
    extra: tuple  # fixed overrides
    needed: tuple  # files the data folder must hold (alternatives separated by |)
    metric: str  # key of fairseq's valid record
    label: str  # column title
    lower_is_better: bool


TASKS: Dict[str, TaskSpec] = {
    "pr": TaskSpec("downstream", "pr_tiny", "model.upstream", (), ("train.tsv", "train.phn", "valid.tsv",
                                                                   "valid.phn", "dict.phn.txt"),
                   "valid_per", "PER %", True),
    "sid": TaskSpec("speaker", "tiny", "model.ssl_checkpoint", ("task.input_type=ssl", "model.ssl_layer=-1"),
                    ("train.tsv",), "valid_accuracy", "SID acc %", False),
    "ks": TaskSpec("kws", "tiny", "model.ssl_checkpoint", ("task.input_type=ssl", "model.ssl_layer=-1"),
                   (), "valid_accuracy", "KS acc %", False),
}
"""The downstream tasks by name (``--tasks``)."""


# --------------------------------------------------------------------------- inputs


def split_list(spec: str, what: str) -> List[str]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise UserError(f"{what} is empty")
    return items


def upstream_identity(upstream: str) -> str:
    """Content digest of a checkpoint file, or the upstream name itself (a registry name)."""
    path = Path(upstream)
    if path.is_file():
        return file_digest(path)
    if path.suffix in (".pt", ".ckpt") or os.sep in upstream:
        raise UserError(f"upstream checkpoint {upstream} does not exist (--upstreams)")
    return upstream


def data_identity(data: Path) -> Dict[str, str]:
    """Digests of the data folder's top-level manifests, transcripts, labels and lists (a folder tree's
    audio is identified by its lists and file names)."""
    out = {}
    for p in sorted(data.iterdir()):
        if p.is_file() and p.suffix in (".tsv", ".phn", ".lbl", ".txt", ".json"):
            out[p.name] = file_digest(p)
        elif p.is_dir():
            out[p.name + "/"] = digest(sorted(q.name for q in p.iterdir()))
    return out


def check_data(task: str, data: Optional[str]) -> Path:
    """The task's data folder, checked for the files it needs."""
    if not data:
        raise UserError(f"task {task} needs its data: give --{task}-data DIR")
    path = Path(data)
    if not path.is_dir():
        raise UserError(f"--{task}-data {data} is not a folder")
    missing = [f for f in TASKS[task].needed if not (path / f).is_file()]
    if missing:
        raise UserError(f"--{task}-data {data} lacks {', '.join(missing)} (see fairseq-ext-evaluate --help for "
                        f"the layout)")
    return path


# --------------------------------------------------------------------------- runs


def cache_overrides(task: str, out: Path, name: str, feature_cache: str) -> List[str]:
    """The feature-cache override of a task (phone recognition only: the speaker tasks train on random crops)."""
    if task != "pr" or feature_cache == "off":
        return []
    where = "memory" if feature_cache == "memory" else str((out / "cache" / name).resolve())
    return [f"task.feature_cache={where}"]


def cache_size(folder: Path) -> Dict:
    files = list(folder.glob("*.npy")) if folder.is_dir() else []
    return {"path": str(folder), "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def train_head(out: Path, name: str, upstream: str, task: str, data: Path, seed: int, max_update: int,
               identity: Dict, threads: Optional[int], overrides: Sequence[str] = (),
               speed: Sequence[str] = ()) -> Dict:
    """Train (or skip) one downstream run; ``speed``: overrides that do not change the result (the feature
    cache), kept out of the run's identity. Returns ``{"value", "best", "updates", "seconds", "skipped", "run"}``."""
    from fairseq_ext.paths import config_dir
    from fairseq_ext.train_run import CPU_OVERRIDES, USER_DIR, train, update_schedule

    spec = TASKS[task]
    run_dir = out / "runs" / name / task / f"seed{seed}"
    source = Path(upstream).resolve() if Path(upstream).is_file() else upstream
    ov = [f"task.data={data.resolve()}", f"{spec.upstream_key}={source}", f"common.user_dir={USER_DIR}",
          f"common.seed={seed}", *CPU_OVERRIDES, *spec.extra, *overrides]
    run = train(run_dir, config_dir(spec.config_group), spec.config_name, ov, max_update, identity,
                schedule=[*update_schedule(max_update), *speed], threads=threads, restart=True,
                name=f"{name}/{task}/seed{seed}")
    values = [float(r[spec.metric]) for r in run.records if r["kind"] == "valid" and spec.metric in r]
    if not values:
        raise UserError(f"{name}/{task}/seed{seed}: no {spec.metric} in {run.log}; see that log")
    return {"value": values[-1], "best": min(values) if spec.lower_is_better else max(values),
            "updates": run.updates, "seconds": round(run.seconds, 1), "skipped": run.skipped, "run": str(run_dir)}


def probe_upstream(out: Path, name: str, upstream: str, tsv: str, phones: Optional[str], speakers: Optional[str],
                   spk_file: Optional[str], n_clusters: int, seed: int, ident: str) -> Dict:
    """The per-layer probe report of one upstream (``probe/NAME.json``), skipped when its stamp matches."""
    from fairseq_ext.probe import run_probe_report

    json_path = out / "probe" / f"{name}.json"
    stamp_path = out / "probe" / ".stamps" / f"{name}.json"
    sig = digest({"upstream": ident, "tsv": file_digest(tsv), "phones": phones and file_digest(phones),
                  "speakers": speakers and file_digest(speakers), "spk_file": spk_file and file_digest(spk_file),
                  "n_clusters": n_clusters, "seed": seed})
    stamp = read_stamp(stamp_path)
    if json_path.is_file() and stamp and stamp.get("signature") == sig:
        logger.info("skipping the probe of %s: %s is up to date", name, json_path)
        return json.loads(json_path.read_text())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = run_probe_report(tsv, upstream, spk_file=spk_file, speakers=speakers, phones=phones,
                              n_clusters=n_clusters, seed=seed, device="cpu", json_path=str(json_path))
    write_stamp(stamp_path, sig)
    return report


# --------------------------------------------------------------------------- report


def mean_sd(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}


def format_cell(cell: Optional[Dict]) -> str:
    if not cell:
        return "-"
    return f"{cell['mean']:.1f} ± {cell['sd']:.1f}" if cell["n"] > 1 else f"{cell['mean']:.1f}"


def markdown_table(report: Dict) -> str:
    tasks = report["tasks"]
    head = "| upstream | " + " | ".join(TASKS[t].label for t in tasks) + " |"
    lines = [head, "|---|" + "---|" * len(tasks)]
    for name, row in report["upstreams"].items():
        lines.append(f"| {name} | " + " | ".join(format_cell(row["tasks"].get(t)) for t in tasks) + " |")
    seeds = ",".join(str(s) for s in report["seeds"])
    return ("\n".join(lines) + f"\n\nMean ± sd over seeds {seeds} of the last validation of each run "
            "(PER: lower is better; accuracies: higher is better).\n")


def plot_layers(probes: Dict[str, Dict], path: Path) -> Path:
    """``layers.png``: speaker-probe accuracy and PNMI per layer, one line per upstream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("spk_acc", "speaker-probe accuracy"), ("pnmi", "phone information (PNMI)"))
    for ax, (key, title) in zip(axes, panels):
        for name, rep in probes.items():
            layers = sorted(rep["layers"], key=int)
            pts = [(int(l), rep["layers"][l][key]) for l in layers if key in rep["layers"][l]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("transformer layer")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")  # atomic: written then renamed
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- main


def main(upstreams: str, names: Optional[str] = None, tasks: str = "pr,sid", out: str = "eval",
         seeds: str = "1", pr_data: Optional[str] = None, sid_data: Optional[str] = None,
         ks_data: Optional[str] = None, pr_updates: int = 200, sid_updates: int = 200, ks_updates: int = 200,
         probe_tsv: Optional[str] = None, probe_phones: Optional[str] = None, probe_speakers: Optional[str] = None,
         probe_spk_file: Optional[str] = None, probe_clusters: int = 50, threads: Optional[int] = None,
         feature_cache: str = "disk", jobs: int = 1, override: Sequence[str] = ()) -> Dict:
    """Train every (upstream, task, seed) head, probe every upstream, write the report; returns it (JSON)."""
    ups = split_list(upstreams, "--upstreams")
    labels = split_list(names, "--names") if names else [Path(u).stem for u in ups]
    if len(labels) != len(ups):
        raise UserError(f"--names gives {len(labels)} names for {len(ups)} upstreams")
    if len(set(labels)) != len(labels):
        raise UserError(f"upstream names must differ, got {','.join(labels)}: give --names")
    task_list = split_list(tasks, "--tasks")
    unknown = [t for t in task_list if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)} in --tasks: choose from {', '.join(TASKS)}")
    try:
        seed_list = [int(s) for s in split_list(seeds, "--seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    updates = {"pr": pr_updates, "sid": sid_updates, "ks": ks_updates}
    for t in task_list:
        if updates[t] < 1:
            raise UserError(f"--{t}-updates must be at least 1, got {updates[t]}")
    data = {t: check_data(t, {"pr": pr_data, "sid": sid_data, "ks": ks_data}[t]) for t in task_list}
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if feature_cache not in ("disk", "memory", "off"):
        raise UserError(f"--feature-cache must be disk, memory or off, got {feature_cache!r}")
    if probe_tsv and not Path(probe_tsv).is_file():
        raise UserError(f"--probe-tsv {probe_tsv} does not exist")
    for opt, val in (("--probe-phones", probe_phones), ("--probe-speakers", probe_speakers),
                     ("--probe-spk-file", probe_spk_file)):
        if val and not Path(val).is_file():
            raise UserError(f"{opt} {val} does not exist")
    if probe_tsv and not (probe_phones or probe_speakers or probe_spk_file):
        raise UserError("--probe-tsv needs --probe-phones and/or --probe-speakers (or --probe-spk-file)")
    idents = [upstream_identity(u) for u in ups]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_ids = {t: data_identity(p) for t, p in data.items()}
    for o in override:
        if ":" not in o or "=" not in o or o.split(":", 1)[0] not in task_list:
            raise UserError(f"--override {o!r} must be TASK:KEY=VALUE with TASK one of {','.join(task_list)}")
    extra = {t: [o.split(":", 1)[1] for o in override if o.split(":", 1)[0] == t] for t in task_list}

    runs = [(n, u, i, t, s) for n, u, i in zip(labels, ups, idents) for t in task_list for s in seed_list]
    def one(job) -> Dict:
        n, u, i, t, s = job
        return train_head(out_dir, n, u, t, data[t], s, updates[t], {"upstream": i, "data": data_ids[t]}, threads,
                          extra[t], cache_overrides(t, out_dir, n, feature_cache))

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:  # each run is a fairseq-hydra-train process
        futures = [pool.submit(one, job) for job in runs]
        for _ in progress(concurrent.futures.as_completed(futures), total=len(futures),
                          desc="evaluate: downstream runs", unit="run"):
            pass
    results: Dict[str, Dict[str, List[Dict]]] = {n: {t: [] for t in task_list} for n in labels}
    for (n, _, _, t, _), future in zip(runs, futures):
        results[n][t].append(future.result())
    probes: Dict[str, Dict] = {}
    if probe_tsv:
        for n, u, i in progress(list(zip(labels, ups, idents)), desc="evaluate: layer probes", unit="upstream"):
            probes[n] = probe_upstream(out_dir, n, u, probe_tsv, probe_phones, probe_speakers, probe_spk_file,
                                       probe_clusters, seed_list[0], i)

    report = {"tasks": task_list, "seeds": seed_list, "updates": {t: updates[t] for t in task_list},
              "data": {t: str(p) for t, p in data.items()}, "upstreams": {}}
    for n, u in zip(labels, ups):
        row = {"upstream": u, "tasks": {}, "runs": results[n]}
        for t in task_list:
            row["tasks"][t] = mean_sd([r["value"] for r in results[n][t]])
        if n in probes:
            row["probe"] = probes[n]["layers"]
        if "pr" in task_list and feature_cache == "disk":
            row["feature_cache"] = cache_size(out_dir / "cache" / n)
            logger.info("%s: feature cache %s: %d utterances, %.1f MB", n, row["feature_cache"]["path"],
                        row["feature_cache"]["files"], row["feature_cache"]["bytes"] / 1e6)
        report["upstreams"][n] = row
    with atomic_output(out_dir / "report.json") as f:
        json.dump(report, f, indent=1)
    table = markdown_table(report)
    with atomic_output(out_dir / "report.md") as f:
        f.write(table)
    if probes:
        plot_layers(probes, out_dir / "layers.png")
        logger.info("per-layer figure: %s", out_dir / "layers.png")
    else:
        logger.info("no --probe-tsv: no per-layer figure")
    print(table, end="")
    return report


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstreams", required=True, help="comma-separated checkpoints or upstream names")
    p.add_argument("--names", help="comma-separated report names of the upstreams (default: file stems)")
    p.add_argument("--tasks", default="pr,sid", help=f"comma-separated tasks of {','.join(TASKS)} (default pr,sid)")
    p.add_argument("--out", default="eval", help="output folder (default ./eval)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds, one run per seed (default 1)")
    for t in TASKS:
        p.add_argument(f"--{t}-data", help=f"data folder of task {t}")
        p.add_argument(f"--{t}-updates", type=int, default=200, help=f"training updates of task {t} (default 200)")
    p.add_argument("--probe-tsv", help="manifest of the utterances to probe (enables the per-layer figure)")
    p.add_argument("--probe-phones", help="frame-level phones uid<TAB>p1,p2,... at 100 Hz (PNMI)")
    p.add_argument("--probe-speakers", help="uid<TAB>speaker table (speaker probe)")
    p.add_argument("--probe-spk-file", help="speaker per manifest line (speaker probe)")
    p.add_argument("--probe-clusters", type=int, default=50, help="k-means clusters of the PNMI probe (default 50)")
    p.add_argument("--feature-cache", default="disk", choices=["disk", "memory", "off"],
                   help="phone recognition reads each utterance's upstream layers once: cached in OUT/cache/NAME "
                        "(disk, shared by the seeds and reruns), in each training process (memory), or not (off)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (default 1)")
    p.add_argument("--threads", type=int, help="OMP threads of each training process (default: inherit)")
    p.add_argument("--override", action="append", default=[], metavar="TASK:KEY=VALUE",
                   help="extra hydra override of one task's runs, e.g. pr:model.lstm_hidden=64 (repeatable)")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
