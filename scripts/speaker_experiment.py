"""Usage: python scripts/speaker_experiment.py OUT_DIR [--models simple,boss,boss_hubert,boss_hubert_random]
                                     (also: boss_uttnorm)
                                     [--seeds 1] [--max-update 600] [--pretrain-updates 1500]
                                     [--n-speakers 20] [--utts-per-speaker 20] [--threads 1] [--jobs 1]
                                     [--quick] [--json RESULTS.json] [--force]

Speaker identification on a generated multi-speaker corpus with the real trainer: the homework's
simple vs boss heads on log-Mels, and the boss head on frozen features of a HuBERT checkpoint,
all at equal updates. One command reproduces everything; reruns skip finished steps.

  1. corpus      OUT_DIR/corpus: simple_kmeans.make_demo_corpus, --n-speakers x --utts-per-speaker
                 utterances (corpus seed 1); OUT_DIR/data/{train,valid,test}.tsv + .lbl: per speaker
                 70% / 15% / 15% of the utterances (train / checkpoint selection / reported test)
  2. upstream    boss_hubert: a plain HuBERT (config/pretrain/dhubert_tiny, 2 layers x 64, speaker and
                 pitch heads off, HuBERT's loss: the "plain" variant of scripts/dhubert_experiment.py)
                 pre-trained for --pretrain-updates on MFCC k-means labels (K=100) of ANOTHER generated
                 corpus (16 other speakers x 24 utterances, corpus seed 2; OUT_DIR/pretrain);
                 boss_hubert_random: a randomly initialised fairseq HuBERT of the same size (control:
                 what the head gets from the architecture alone)
  3. heads       fairseq-hydra-train, --max-update updates of batch 32, validation every third,
                 lr 1e-3 with 100 warm-up updates and cosine decay, same seed per row:
                   simple              config/speaker/simple (1 Transformer layer, d_model 80, mean
                                       pooling, cross-entropy) on the fixed log-Mel front-end
                   boss                config/speaker/boss reduced to d_model 128, 2 Conformer layers,
                                       FFN 256, embed 128 (self-attention pooling, AM-softmax s=30
                                       m=0.2) on the fixed log-Mel front-end
                   boss_uttnorm        (not in the default list) the same with model.input_norm=utterance:
                                       per-utterance mean/variance normalisation of every Mel bin, which
                                       removes loudness and fixed spectral tilt (speaker traits of the
                                       generated voices that HuBERT's normalised CNN does not keep either)
                   boss_hubert         the same reduced boss on the frozen HuBERT (learned weighted sum of
                                       all hidden states; 64-frame crops at 50 Hz = the same 1.28 s of
                                       audio as 128 log-Mel frames)
                   boss_hubert_random  the same on the random-init HuBERT
                 Run dirs OUT_DIR/runs/{model}_s{seed} (train.log, result.json).
  4. test        accuracy of each checkpoint_best.pt (chosen by validation accuracy) on test.tsv

Prints a Markdown table: model, input, seed, validation accuracy at each validation, test accuracy,
training seconds, and the mean +- sd over seeds. --json saves every number. --quick: toy size
(4 speakers x 8 utterances, 2 pre-training and 4 head updates) that checks the machinery in
seconds; its accuracies mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(REPO))

from simple_kmeans.cli import load_script  # noqa: E402
from fairseq_ext.base.atomic import atomic_output  # noqa: E402
from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.base.errors import UserError  # noqa: E402


kws = load_script(__file__, "kws_sweep")
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
PRETRAIN = {"n_speakers": 16, "utts": 24, "heldout": 4, "seed": 2, "n_clusters": 100}
QUICK = {"n_speakers": 4, "utts": 8, "pretrain": {"n_speakers": 3, "utts": 6, "heldout": 2, "seed": 2,
                                                  "n_clusters": 8}, "pretrain_updates": 2, "max_update": 4}


# --------------------------------------------------------------------------- data


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


def make_corpus(out: Path, n_speakers: int, utts: int) -> Path:
    from simple_kmeans import make_demo_corpus

    corpus = out / "corpus"
    stamp = corpus / "settings.json"
    settings = {"n_speakers": n_speakers, "utts_per_speaker": utts, "seed": 1}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == settings):
        make_demo_corpus.main(str(corpus), n_speakers=n_speakers, utts_per_speaker=utts, seed=1)
        with atomic_output(stamp) as f:
            json.dump(settings, f)
    return corpus


# --------------------------------------------------------------------------- upstreams


def pretrain_hubert(out: Path, max_update: int, threads: int, force: bool, p: Dict) -> Path:
    """Plain HuBERT (dhubert_tiny, heads off) pre-trained on another generated corpus; its checkpoint."""
    dx = load_script(__file__, "dhubert_experiment")
    dp = dx.dp
    stamps = dp.Stamps(out / ".stamps", force=force)
    with dp.folder_lock(out, "preparing the pre-training data", wait=True):
        corpus = dx.make_corpus(stamps, out, p["n_speakers"], p["utts"], p["seed"])
        man = dx.write_manifests(corpus, out / "manifest", p["heldout"])
        lab = dx.make_labels(stamps, man, out, p["n_clusters"], p["seed"])
    overrides = ["+data=iter1", f"task.data={man}", f"task.label_dir={lab}", f"common.user_dir={dp.USER_DIR}",
                 *dp.CPU_OVERRIDES, *dx.PLAIN, "common.seed=1"]
    schedule = dp.interval_overrides(max_update, dp.updates_per_epoch(man / "train.tsv"))
    run = dp.train(stamps, "pretrain", out / "run", overrides, max_update, {"labels": stamps.read("labels")},
                   threads=threads, schedule=schedule)
    valid = dp.last_record(run["records"], "valid") or {}
    logger.info("pre-trained HuBERT: %d updates, masked-prediction accuracy %s", run["updates"],
                valid.get("valid_correct_m_0", "?"))
    return Path(run["ckpt"])


def random_hubert(path: Path) -> Path:
    """A randomly initialised fairseq HuBERT of dhubert_tiny's size (tests/hubert_ckpt.py)."""
    if path.is_file():
        return path
    spec = importlib.util.spec_from_file_location("fairseq_ext_hubert_ckpt", REPO / "tests" / "hubert_ckpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_hubert_checkpoint(path, label_rate=100, num_classes=100, seed=0)


# --------------------------------------------------------------------------- report


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
        lines.append(f"| {name} | {rs[0]['input']} | {len(rs)} | {kws.mean_sd([r['best_valid'] for r in rs])} | "
                     f"{kws.mean_sd([r['final_valid'] for r in rs])} | {kws.mean_sd([r['test'] for r in rs])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(out_dir: str, models: str = "simple,boss,boss_hubert,boss_hubert_random", seeds: str = "1",
         max_update: int = 600, pretrain_updates: int = 1500, n_speakers: int = 20, utts_per_speaker: int = 20,
         threads: int = 1, jobs: int = 1, quick: bool = False, json_path: Optional[str] = None,
         force: bool = False) -> Dict:
    """Run the experiment (see the module docstring); returns ``{"rows": [...], "report": str}``."""
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODELS]
    if not wanted or unknown:
        raise UserError(f"--models {models!r}: choose from {','.join(MODELS)}")
    seed_list = kws._ints(seeds, "--seeds")
    if not seed_list or max_update < 1 or pretrain_updates < 1:
        raise UserError("--seeds must not be empty; --max-update and --pretrain-updates must be >= 1")
    pre = dict(PRETRAIN)
    if quick:
        n_speakers, utts_per_speaker, pre = QUICK["n_speakers"], QUICK["utts"], dict(QUICK["pretrain"])
        pretrain_updates, max_update = QUICK["pretrain_updates"], min(max_update, QUICK["max_update"])
    out = Path(out_dir).resolve()
    corpus = make_corpus(out, n_speakers, utts_per_speaker)
    data = out / "data"
    sizes = write_splits(corpus, data)
    ckpts: Dict[str, str] = {}
    if "boss_hubert" in wanted:
        ckpts["ckpt"] = str(pretrain_hubert(out / "pretrain", pretrain_updates, threads, force, pre))
    if "boss_hubert_random" in wanted:
        ckpts["random"] = str(random_hubert(out / "hubert_random.pt"))
    base = [f"task.data={data}", f"common.user_dir={kws.USER_DIR}", *kws.CPU_OVERRIDES,
            *kws.schedule_overrides(max_update, n_valid=3), f"lr_scheduler.warmup_updates={max(1, max_update // 6)}"]
    data_id = {"corpus": json.loads((corpus / "settings.json").read_text()), "sizes": sizes}
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
            jobs_kw[run] = dict(run_dir=out / "runs" / run, config_dir=REPO / "config" / "speaker",
                                config_name=config, overrides=ov, data=data, threads=threads,
                                identity=identity, force=force)
            meta[run] = {"model": name, "input": what, "seed": seed}
    results = kws.run_all(jobs_kw, jobs)
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


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (corpus/, data/, pretrain/, runs/)")
    p.add_argument("--models", default="simple,boss,boss_hubert,boss_hubert_random",
                   help="comma-separated models to train (default: all)")
    p.add_argument("--seeds", default="1", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--max-update", type=int, default=600, help="updates per head (default: %(default)s)")
    p.add_argument("--pretrain-updates", type=int, default=1500,
                   help="HuBERT pre-training updates (default: %(default)s)")
    p.add_argument("--n-speakers", type=int, default=20, help="speakers in the corpus (default: %(default)s)")
    p.add_argument("--utts-per-speaker", type=int, default=20, help="utterances per speaker (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per training run (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="head trainings at a time (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="toy size: checks the machinery in seconds")
    p.add_argument("--json", dest="json_path", default=None, help="write every number to this JSON file")
    p.add_argument("--force", action="store_true", help="redo the pre-training and every head")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
