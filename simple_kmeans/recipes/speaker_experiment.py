"""Speaker identification on a generated multi-speaker corpus with the real trainer: simple vs boss
heads on log-Mels and the boss head on frozen HuBERT features, at equal updates
(``scripts/speaker_experiment.py`` documents the steps)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.steps import Runner, Unit, file_digest, folder_lock
from fairseq_ext.paths import config_dir
from fairseq_ext.train_run import CPU_OVERRIDES, USER_DIR, epoch_schedule, train, update_schedule
from simple_kmeans.recipes.dhubert_inputs import updates_per_epoch
from simple_kmeans.recipes.experiment_data import PLAIN, make_corpus, make_labels, write_manifests
from simple_kmeans.recipes.kws_sweep import mean_sd, parse_ints, run_all

logger = logging.getLogger("speaker_experiment")

BOSS_REDUCED = ["model.d_model=128", "model.encoder_layers=2", "model.ffn_dim=256", "model.embed_dim=128"]
MODELS = {
    # name: (config, input description, extra overrides; "{ckpt}" / "{random}" are the upstream checkpoints)
    "simple": ("simple", "log-Mel", ["task.input_type=audio"]),
    "boss": ("boss", "log-Mel", ["task.input_type=audio", *BOSS_REDUCED]),
    "boss_uttnorm": ("boss", "log-Mel, per-utterance normalised",
                     ["task.input_type=audio", "model.input_norm=utterance", *BOSS_REDUCED]),
    "boss_hubert": ("boss", "frozen HuBERT (pre-trained)",
                    ["task.input_type=ssl", "task.segment_len=64", "model.ssl_layer=-1",
                     "model.ssl_checkpoint={ckpt}", *BOSS_REDUCED]),
    "boss_hubert_random": ("boss", "frozen HuBERT (random init)",
                           ["task.input_type=ssl", "task.segment_len=64", "model.ssl_layer=-1",
                            "model.ssl_checkpoint={random}", *BOSS_REDUCED]),
}
SPLIT_SHARES = (0.7, 0.15)  # train, valid; the rest is test
CORPUS_SEED = 1
PRETRAIN = {"n_speakers": 16, "utts": 24, "heldout": 4, "seed": 2, "n_clusters": 100}
QUICK = {"n_speakers": 4, "utts": 8, "pretrain": {"n_speakers": 3, "utts": 6, "heldout": 2, "seed": 2,
                                                  "n_clusters": 8}, "pretrain_updates": 2, "max_update": 4}


def write_splits(corpus: Path, data: Path) -> Dict[str, int]:
    """``{train,valid,test}.tsv`` + ``.lbl`` (speaker labels) from the demo corpus; returns the split sizes."""
    import soundfile as sf

    root = (corpus / "wav").resolve()
    speakers = dict(line.split("\t") for line in (corpus / "speakers.tsv").read_text().splitlines() if line)
    rows: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    labels: Dict[str, List[str]] = {k: [] for k in rows}
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        wavs = sorted(spk_dir.glob("*.wav"))
        n_train = max(1, round(len(wavs) * SPLIT_SHARES[0]))
        n_valid = max(1, round(len(wavs) * SPLIT_SHARES[1]))
        if len(wavs) < n_train + n_valid + 1:
            raise UserError(f"{spk_dir} has {len(wavs)} utterances: need at least 3 per speaker")
        for i, wav in enumerate(wavs):
            split = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
            rows[split].append(f"{wav.relative_to(root)}\t{sf.info(str(wav)).frames}\n")
            labels[split].append(speakers[wav.stem].strip() + "\n")
    for split in rows:
        for path, text in ((data / f"{split}.tsv", f"{root}\n" + "".join(rows[split])),
                           (data / f"{split}.lbl", "".join(labels[split]))):
            if not path.is_file() or path.read_text() != text:
                with atomic_output(path) as f:
                    f.write(text)
    return {k: len(v) for k, v in rows.items()}


def pretrain_hubert(out: Path, max_update: int, threads: int, force: bool, p: Dict) -> Path:
    """Plain HuBERT (dhubert_tiny, heads off) pre-trained on another generated corpus; its checkpoint."""
    runner = Runner(out, force=force)
    with folder_lock(out, "preparing the pre-training data", wait=True):
        corpus = make_corpus(runner, out, p["n_speakers"], p["utts"], p["seed"])
        man = write_manifests(corpus, out / "manifest", p["heldout"])
        lab = make_labels(man, out, p["n_clusters"], p["seed"], force)
    overrides = ["+data=iter1", f"task.data={man}", f"task.label_dir={lab}", f"common.user_dir={USER_DIR}",
                 *CPU_OVERRIDES, *PLAIN, "common.seed=1"]
    schedule = epoch_schedule(max_update, updates_per_epoch(man / "train.tsv"))
    inputs = {"labels": [file_digest(lab / f"{s}.km") for s in ("train", "valid")]}
    run = train(out / "run", config_dir("pretrain"), "dhubert_tiny", overrides, max_update, inputs,
                schedule=schedule, threads=threads, force=force, name="pretrain")
    valid = run.last("valid") or {}
    logger.info("pre-trained HuBERT: %d updates, masked-prediction accuracy %s", run.updates,
                valid.get("valid_correct_m_0", "?"))
    return run.ckpt


def random_hubert(path: Path) -> Path:
    """A randomly initialised fairseq HuBERT of dhubert_tiny's size (fairseq_ext.tiny_checkpoint)."""
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    runner = Runner(path.parent)
    runner.run([Unit(path.stem, make_tiny_hubert_checkpoint,
                     {"path": str(path), "label_rate": 100, "num_classes": 100, "seed": 0}, [path])])
    return path


def report(rows: List[Dict]) -> str:
    steps = sorted({u for r in rows for u, _ in r["valid"]})
    lines = ["| model | input | seed | " + " | ".join(f"valid @{u}" for u in steps) + " | test acc | train s |",
             "|---|---|---|" + "---|" * len(steps) + "---|---|"]
    for r in rows:
        acc = dict((u, a) for u, a in r["valid"])
        cells = " | ".join(f"{acc[u]:.1f}" if u in acc else "" for u in steps)
        lines.append(f"| {r['model']} | {r['input']} | {r['seed']} | {cells} | {r['test']:.1f} | {r['seconds']:.0f} |")
    groups: Dict[str, List[Dict]] = {}
    for r in rows:
        groups.setdefault(r["model"], []).append(r)
    lines += ["", "| model | input | seeds | best valid acc | final valid acc | test acc |", "|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        lines.append(f"| {name} | {rs[0]['input']} | {len(rs)} | {mean_sd([r['best_valid'] for r in rs])} | "
                     f"{mean_sd([r['final_valid'] for r in rs])} | {mean_sd([r['test'] for r in rs])} |")
    return "\n".join(lines)


def main(out_dir: str, models: str = "simple,boss,boss_hubert,boss_hubert_random", seeds: str = "1",
         max_update: int = 600, pretrain_updates: int = 1500, n_speakers: int = 20, utts_per_speaker: int = 20,
         threads: int = 1, jobs: int = 1, quick: bool = False, json_path: Optional[str] = None,
         force: bool = False) -> Dict:
    """Run the experiment; returns ``{"settings", "rows": [...], "report": str}``."""
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODELS]
    if not wanted or unknown:
        raise UserError(f"--models {models!r}: choose from {','.join(MODELS)}")
    seed_list = parse_ints(seeds, "--seeds")
    if not seed_list or max_update < 1 or pretrain_updates < 1:
        raise UserError("--seeds must not be empty; --max-update and --pretrain-updates must be >= 1")
    pre = dict(PRETRAIN)
    if quick:
        n_speakers, utts_per_speaker, pre = QUICK["n_speakers"], QUICK["utts"], dict(QUICK["pretrain"])
        pretrain_updates, max_update = QUICK["pretrain_updates"], min(max_update, QUICK["max_update"])
    out = Path(out_dir).resolve()
    with folder_lock(out, "preparing the data", wait=True):
        corpus = make_corpus(Runner(out, force=force), out, n_speakers, utts_per_speaker, CORPUS_SEED)
        data = out / "data"
        sizes = write_splits(corpus, data)
    ckpts: Dict[str, str] = {}
    if "boss_hubert" in wanted:
        ckpts["ckpt"] = str(pretrain_hubert(out / "pretrain", pretrain_updates, threads, force, pre))
    if "boss_hubert_random" in wanted:
        ckpts["random"] = str(random_hubert(out / "hubert_random.pt"))
    base = [f"task.data={data}", f"common.user_dir={USER_DIR}", *CPU_OVERRIDES,
            *update_schedule(max_update, n_valid=3), f"lr_scheduler.warmup_updates={max(1, max_update // 6)}"]
    data_id = {"corpus": {"n_speakers": n_speakers, "utts_per_speaker": utts_per_speaker, "seed": CORPUS_SEED},
               "sizes": sizes}
    suffix = "" if max_update == 600 else f"_u{max_update}"
    jobs_kw: Dict[str, Dict] = {}
    meta: Dict[str, Dict] = {}
    for seed in seed_list:
        for name in wanted:
            config, what, extra = MODELS[name]
            run = f"{name}{suffix}_s{seed}"
            ov = [*base, *(o.format(**ckpts) for o in extra), f"common.seed={seed}"]
            # what the run depends on besides its overrides (other models' upstreams do not count)
            identity = dict(data_id, pretrain=[pre, pretrain_updates] if name == "boss_hubert" else None)
            jobs_kw[run] = dict(run_dir=out / "runs" / run, config_dir=config_dir("speaker"), config_name=config,
                                overrides=ov, max_update=max_update, data=data, threads=threads,
                                identity=identity, force=force)
            meta[run] = {"model": name, "input": what, "seed": seed}
    results = run_all(jobs_kw, jobs)
    rows = [{**meta[r], "run": r, **{k: results[r][k] for k in ("valid", "best_valid", "final_valid", "test",
                                                                 "seconds")}} for r in jobs_kw]
    head = (f"Speaker identification on {corpus} ({n_speakers} speakers x {utts_per_speaker} utterances; "
            f"train/valid/test {sizes['train']}/{sizes['valid']}/{sizes['test']}), {max_update} updates of "
            f"batch 32 per model, accuracy in % (test: checkpoint_best.pt by validation accuracy)"
            + (f"; HuBERT pre-trained {pretrain_updates} updates on {pre['n_speakers']} other speakers"
               if "ckpt" in ckpts else ""))
    text = head + "\n\n" + report(rows)
    print(text, flush=True)
    payload = {"settings": {"models": wanted, "seeds": seed_list, "max_update": max_update,
                            "pretrain_updates": pretrain_updates, "n_speakers": n_speakers,
                            "utts_per_speaker": utts_per_speaker, "upstreams": ckpts}, "rows": rows, "report": text}
    if json_path:
        with atomic_output(json_path) as f:
            json.dump(payload, f, indent=1)
    return payload
