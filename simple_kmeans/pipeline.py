"""Usage: fairseq-ext-labels AUDIO_ROOT OUT_DIR [options]     labels for your audio
       fairseq-ext-labels --tsv-dir MANIFESTS OUT_DIR [options]   ... from existing train/valid.tsv
       fairseq-ext-labels --demo OUT_DIR [options]             ... for a generated demo corpus

The whole HuBERT label pipeline in one command, in fairseq's file layout:

  1. manifest   OUT_DIR/manifest/{train,valid}.tsv     (fairseq-ext-manifest; skipped with --tsv-dir)
  2. features   OUT_DIR/feat/{split}_{rank}_{N}.npy/.len   MFCC (default) or HuBERT (--feature hubert
                --ckpt CKPT --layer L), N shards per split (--nshard) run as --jobs local processes
  3. k-means    OUT_DIR/km.mdl                 on the train features (--n-clusters, --backend faiss|sklearn,
                --percent)
  4. labels     OUT_DIR/labels/{split}_{rank}_{N}.km
  5. merge      OUT_DIR/labels/{split}.km and dict.km.txt (checked against manifest and features)
  6. quality    OUT_DIR/quality.txt / quality.json: label statistics and, with --phones
                (uid<TAB>p1,p2,... at 100 Hz), phone purity, cluster purity and PNMI
  7. espnet     OUT_DIR/espnet/ (with --espnet): ESPnet hubert1/ssl1 text + tokens.txt

Then train: fairseq-hydra-train ... task.data=OUT_DIR/manifest task.label_dir=OUT_DIR/labels
task.labels='["km"]' model.label_rate=100 (50 for HuBERT-feature labels); the command is printed.

Reruns: every unit of work (a step, or one shard of a step) records, after its outputs have
been renamed into place, a stamp OUT_DIR/.stamps/<unit>.json holding a hash of its inputs and
settings. A unit is skipped ("skipping ...") when its stamp matches and all its outputs exist;
an interrupted unit has no stamp and is redone; a deleted output redoes only its unit; changed
settings or inputs (new audio files, another K, ...) redo the units they affect. An audio file's
identity is its size, modification time and a hash of three 64 KiB blocks (start, middle, end), so
audio rewritten in place with the same length is redone too. After a run, the files an earlier run
with other options left in feat/, labels/, kept_manifest/ and espnet/ (shards of another --nshard,
--skip-bad reports) are removed, with their stamps: the folder describes this run only. --force
redoes everything. The folder is locked while a run (its worker processes included) is alive;
workers die with the run, even on kill -9.

--skip-bad leaves unusable audio out instead of stopping: at the manifest step (unreadable,
wrong channels or rate; listed in OUT_DIR/manifest/bad_files.tsv) and at the feature step (files
that fail to decode, disagree with the manifest or are too short; listed in
OUT_DIR/feat/{split}_{rank}_{N}.skipped.tsv). The merged labels then follow
OUT_DIR/kept_manifest/{split}.tsv (the manifest minus the skipped files, line for line): the
printed training command uses it as task.data, and the end of the run says how many files were
left out and where they are listed.

--demo OUT_DIR generates a synthetic corpus with known phones in OUT_DIR/corpus (4 speakers x
12 utterances, simple_kmeans.make_demo_corpus), runs every step on it with --phones and prints
the quality report; it takes a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_ext.base.atomic import atomic_output, check_writable_dir
from fairseq_ext.base.bad_audio import count_skipped, skipped_path
from fairseq_ext.base.cli import quiet_loggers, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.shards import feat_paths, label_path
from fairseq_ext.base.steps import (
    Runner, Unit, digest, file_digest, file_fingerprint, folder_lock, func_name,
)

logger = logging.getLogger("pipeline")

DEMO = {"n_speakers": 4, "utts_per_speaker": 12, "seed": 0, "valid_percent": 0.1}
LABEL_RATE = {"mfcc": 100, "hubert": 50}
# Below this much audio in a step, starting worker processes costs more than it saves.
PARALLEL_MIN_AUDIO_S = 600.0


# --------------------------------------------------------------------------- steps


def _quality_step(tsv_dir: str, lab_dir: str, splits: List[str], phones: Optional[str],
                  upsample: int, n_clusters: int, json_path: str, txt_path: str) -> None:
    """Measure label quality (``measure_quality.main``) and save the report as text and JSON."""
    from simple_kmeans import measure_quality

    phn = {}
    if phones:
        phn = {"phn_dir": str(Path(phones).parent), "phn_sets": [Path(phones).name[:-len(".tsv")]]}
    report = measure_quality.main(tsv_dir, lab_dir, "km", lab_sets=splits, upsample=upsample,
                                  n_clusters=n_clusters, json_path=json_path, quiet=True, **phn)
    with atomic_output(txt_path) as f:
        f.write(measure_quality.format_report(report))


def _identity(path: str, cache: Optional[Dict[str, object]] = None):
    """:func:`file_fingerprint` of an audio file ("missing" when it cannot be read: the dumper then
    names it, or --skip-bad leaves it out); ``cache`` (one run's) reads each file once per run."""
    if cache is not None and path in cache:
        return cache[path]
    try:
        value = file_fingerprint(path)
    except OSError:
        value = "missing"
    if cache is not None:
        cache[path] = value
    return value


def _list_audio(root: Path, ext: str, cache: Optional[Dict[str, object]] = None) -> List:
    """(relpath, identity) of the audio files the manifest step would see: its input fingerprint."""
    from simple_kmeans.manifest import find_audio, parse_extensions

    return [[rel, _identity(os.path.join(root, rel), cache)] for rel in find_audio(root, parse_extensions(ext))]


def audio_signature(manifest, cache: Optional[Dict[str, object]] = None) -> str:
    """Identity of the audio a manifest lists (:func:`file_fingerprint` of each file): part of every
    feature unit's signature, so audio rewritten in place (same length, same manifest) is redone."""
    return digest([_identity(manifest.audio_path(e), cache) for e in manifest.entries])


def feature_signature(manifest_sig: str, func: str, feature_kwargs: Dict[str, object], extra: Dict[str, object],
                      nshard: int) -> str:
    """What the feature shards of a split are made from (their units' ``inputs["features"]``): the
    manifest's content hash, the dumper's ``module:function``, its settings and NSHARD."""
    return digest([manifest_sig, func, feature_kwargs, extra, nshard])


def label_signature(feature_sig: str, kmeans_sig: str) -> str:
    """What the labels of a split are made from: its features and the k-means unit's signature."""
    return digest([feature_sig, kmeans_sig])


SHARD_KWARGS = ("tsv_dir", "split", "nshard", "rank", "feat_dir")
"""Arguments of a feature unit that name its shard; the others are the dumper's settings."""


@dataclass
class Settings:
    """Everything :func:`main` was asked to do (CLI options, resolved)."""

    out: Path
    audio_root: Optional[str]
    tsv_dir: Optional[str]
    demo: bool
    feature: str
    ckpt: Optional[str]
    layer: Optional[int]
    max_chunk: int
    nshard: int
    n_clusters: int
    backend: str
    percent: float
    seed: int
    valid_percent: Optional[float]
    ext: str
    sample_rate: int
    min_samples: int
    skip_bad: bool
    phones: Optional[str]
    espnet: bool
    uid_style: str


class LabelPipeline:
    """The steps of the pipeline; each one builds its units, with signatures chained from the previous step."""

    def __init__(self, cfg: Settings, runner: Runner):
        self.cfg, self.runner = cfg, runner
        self.feat_dir, self.lab_dir, self.km_path = cfg.out / "feat", cfg.out / "labels", cfg.out / "km.mdl"
        self.man_dir = Path(cfg.tsv_dir).resolve() if cfg.tsv_dir else cfg.out / "manifest"
        # the manifest the labels follow line for line: with --skip-bad, the one without the skipped files
        self.data_dir = cfg.out / "kept_manifest" if cfg.skip_bad else self.man_dir
        self.units: List[Unit] = []  # every unit of this run, done or skipped: what the folder holds after it
        self.identities: Dict[str, object] = {}  # audio path -> file_fingerprint, read once per run

    def _run(self, units: List[Unit], parallel: bool = False) -> None:
        self.units += units
        self.runner.run(units, parallel=parallel)

    def corpus(self) -> None:
        from simple_kmeans import make_demo_corpus

        corpus = self.cfg.out / "corpus"
        kw = {"out_dir": str(corpus), "n_speakers": DEMO["n_speakers"],
              "utts_per_speaker": DEMO["utts_per_speaker"], "seed": DEMO["seed"]}
        self._run([Unit("corpus", make_demo_corpus.main, kw,
                        [corpus / "phones.tsv", corpus / "speakers.tsv", corpus / "f0.tsv"])])
        self.cfg.audio_root = str(corpus / "wav")
        self.cfg.phones = self.cfg.phones or str(corpus / "phones.tsv")
        if self.cfg.valid_percent is None:
            self.cfg.valid_percent = DEMO["valid_percent"]

    def manifest(self) -> None:
        from simple_kmeans import manifest

        cfg = self.cfg
        if not cfg.tsv_dir:
            root = Path(cfg.audio_root).resolve()
            if not root.is_dir():
                raise UserError(f"audio root {cfg.audio_root} is not a folder")
            vp = 0.01 if cfg.valid_percent is None else cfg.valid_percent
            kw = {"root": str(root), "dest": str(self.man_dir), "ext": cfg.ext, "valid_percent": vp,
                  "seed": cfg.seed, "sample_rate": cfg.sample_rate, "min_samples": cfg.min_samples,
                  "skip_bad": cfg.skip_bad}
            outputs = [self.man_dir / "train.tsv"] + ([self.man_dir / "valid.tsv"] if vp > 0 else [])
            self._run([Unit("manifest", manifest.main, kw, outputs,
                            {"audio": digest(_list_audio(root, cfg.ext, self.identities))})])
        self.splits = [s for s in ("train", "valid") if (self.man_dir / f"{s}.tsv").is_file()]
        if "train" not in self.splits:
            raise UserError(f"{self.man_dir}/train.tsv does not exist")
        self.manifests = manifests = {s: read_manifest(self.man_dir / f"{s}.tsv") for s in self.splits}
        self.shards = {s: min(cfg.nshard, len(m)) for s, m in manifests.items()}
        audio_s = sum(e.n_samples for m in manifests.values() for e in m.entries) / cfg.sample_rate
        self.parallel = audio_s >= PARALLEL_MIN_AUDIO_S
        if not self.parallel and self.runner.jobs > 1:
            logger.info("only %.0f s of audio: running the shards in this process", audio_s)
        self.man_sig = {s: file_digest(self.man_dir / f"{s}.tsv") for s in self.splits}

    def _shards(self):
        return [(s, r, self.shards[s]) for s in self.splits for r in range(self.shards[s])]

    def features(self) -> None:
        cfg = self.cfg
        if cfg.feature == "mfcc":
            from simple_kmeans import dump_mfcc_feature

            func, fkw, extra = dump_mfcc_feature.main, {"sample_rate": cfg.sample_rate}, {}
        else:
            from simple_kmeans import dump_hubert_feature

            func = dump_hubert_feature.main
            fkw = {"ckpt_path": str(Path(cfg.ckpt).resolve()), "layer": cfg.layer, "max_chunk": cfg.max_chunk}
            extra = {"ckpt": file_fingerprint(cfg.ckpt)}
        if cfg.skip_bad:
            fkw["skip_bad"] = True  # only when set: stamps of earlier runs without it stay valid

        def outputs(s: str, r: int, n: int) -> List[Path]:
            report = [skipped_path(self.feat_dir, s, r, n)] if cfg.skip_bad else []
            return list(feat_paths(self.feat_dir, s, r, n)) + report

        audio = {s: audio_signature(self.manifests[s], self.identities) for s in self.splits}
        self.feat_sig = {s: feature_signature(self.man_sig[s], func_name(func), fkw, {**extra, "audio": audio[s]},
                                              self.shards[s])
                         for s in self.splits}
        self._run([
            Unit(f"features/{s}_{r}_{n}", func, {"tsv_dir": str(self.man_dir), "split": s, "nshard": n, "rank": r,
                                                 "feat_dir": str(self.feat_dir), **fkw},
                 outputs(s, r, n), {"features": self.feat_sig[s]})
            for s, r, n in self._shards()], parallel=self.parallel)

    def kmeans(self) -> None:
        from simple_kmeans import learn_kmeans

        cfg = self.cfg
        kw = {"feat_dir": str(self.feat_dir), "split": "train", "nshard": self.shards["train"],
              "km_path": str(self.km_path), "n_clusters": cfg.n_clusters, "seed": cfg.seed,
              "percent": cfg.percent, "backend": cfg.backend}
        unit = Unit("kmeans", learn_kmeans.main, kw, [self.km_path],
                    {"features": self.feat_sig["train"]})
        self._run([unit])
        self.lab_sig = {s: label_signature(self.feat_sig[s], unit.signature) for s in self.splits}

    def labels(self) -> None:
        from simple_kmeans import dump_km_label

        self._run([
            Unit(f"labels/{s}_{r}_{n}", dump_km_label.main,
                 {"feat_dir": str(self.feat_dir), "split": s, "km_path": str(self.km_path), "nshard": n,
                  "rank": r, "lab_dir": str(self.lab_dir)},
                 [label_path(self.lab_dir, s, r, n)], {"labels": self.lab_sig[s]})
            for s, r, n in self._shards()], parallel=self.parallel)

    def merge(self) -> None:
        from simple_kmeans import merge_labels

        kept = {"kept_manifest_dir": str(self.data_dir)} if self.cfg.skip_bad else {}
        self._run([
            Unit(f"merge/{s}", merge_labels.main,
                 {"lab_dir": str(self.lab_dir), "split": s, "nshard": self.shards[s], "tsv_dir": str(self.man_dir),
                  "feat_dir": str(self.feat_dir), "n_clusters": self.cfg.n_clusters, **kept},
                 [self.lab_dir / f"{s}.km", self.lab_dir / "dict.km.txt"]
                 + ([self.data_dir / f"{s}.tsv"] if kept else []), {"labels": self.lab_sig[s]})
            for s in self.splits])
        self.merged_sig = digest([self.lab_sig[s] for s in self.splits])

    def quality(self) -> None:
        cfg, out = self.cfg, self.cfg.out
        kw = {"tsv_dir": str(self.data_dir), "lab_dir": str(self.lab_dir), "splits": self.splits,
              "phones": str(Path(cfg.phones).resolve()) if cfg.phones else None,
              "upsample": 100 // LABEL_RATE[cfg.feature], "n_clusters": cfg.n_clusters,
              "json_path": str(out / "quality.json"), "txt_path": str(out / "quality.txt")}
        inputs = {"labels": self.merged_sig, "phones": file_digest(cfg.phones) if cfg.phones else None}
        self._run([Unit("quality", _quality_step, kw,
                        [out / "quality.json", out / "quality.txt"], inputs)])

    def espnet(self) -> None:
        from simple_kmeans import export_espnet

        esp = self.cfg.out / "espnet"
        kw = {"tsv_dir": str(self.data_dir), "lab_dir": str(self.lab_dir), "split": self.splits,
              "out_dir": str(esp), "n_clusters": self.cfg.n_clusters, "uid_style": self.cfg.uid_style}
        outputs = [esp / "tokens.txt"] + [esp / s / f for s in self.splits for f in ("text", "wav.scp", "utt2num_samples")]
        self._run([Unit("espnet", export_espnet.main, kw, outputs,
                        {"labels": self.merged_sig})])

    def run(self) -> None:
        if self.cfg.demo:
            self.corpus()
        self.manifest()
        self.features()
        self.kmeans()
        self.labels()
        self.merge()
        self.quality()
        if self.cfg.espnet:
            self.espnet()

    def prune(self) -> None:
        """Delete what earlier runs with other options left and this run did not make, so that the folder
        describes one run: shards of another --nshard, the reports and kept_manifest/ of a --skip-bad run,
        an --espnet export, and the stamps of units this run does not have."""
        out = self.cfg.out
        keep = {Path(p).resolve() for u in self.units for p in u.outputs}
        names = {self.runner.stamp_path(u).name for u in self.units}
        derived = [self.feat_dir, self.lab_dir, out / "kept_manifest", out / "espnet"]
        removed = []
        for folder in derived:
            if not folder.is_dir() or folder.resolve() == self.man_dir.resolve():
                continue
            for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()  # only when empty
                elif path.resolve() not in keep:
                    path.unlink()
                    removed.append(path)
            with contextlib.suppress(OSError):
                folder.rmdir()
        stamp_dir = self.runner.stamp_dir
        for stamp in sorted(stamp_dir.glob("*.json")) if stamp_dir.is_dir() else []:
            if stamp.name not in names:
                stamp.unlink()
        if removed:
            logger.info("removed %d file(s) of an earlier run with other options (e.g. %s)", len(removed),
                        removed[0])

    def skipped_files(self) -> Dict[str, object]:
        """Files left out by --skip-bad: ``{"manifest": n, "features": n, "reports": [Path]}``."""
        bad_list = self.man_dir / "bad_files.tsv"
        n_manifest = 0
        if self.cfg.skip_bad and not self.cfg.tsv_dir and bad_list.is_file():
            n_manifest = max(0, len(bad_list.read_text(encoding="utf-8").splitlines()) - 1)
        n_features, reports = 0, [bad_list] if n_manifest else []
        for s in self.splits:
            n, paths = count_skipped(self.feat_dir, s, self.shards[s])
            n_features += n
            reports += paths
        return {"manifest": n_manifest, "features": n_features, "reports": reports}

    def training_command(self) -> str:
        """The fairseq-hydra-train command line that uses these labels."""
        spec = importlib.util.find_spec("fairseq")  # located, not imported (importing loads torch)
        fairseq_dir = list(spec.submodule_search_locations)[0] if spec else "<fairseq>"
        return (f"fairseq-hydra-train --config-dir {fairseq_dir}/examples/hubert/config/pretrain "
                "--config-name hubert_base_librispeech "
                f"task.data={self.data_dir} task.label_dir={self.lab_dir} "
                f"task.labels='[\"km\"]' model.label_rate={LABEL_RATE[self.cfg.feature]} "
                f"distributed_training.distributed_world_size=1 hydra.run.dir={self.cfg.out / 'hubert'}")


def main(audio_root: Optional[str] = None, out_dir: Optional[str] = None, demo: Optional[str] = None,
         tsv_dir: Optional[str] = None, feature: str = "mfcc", ckpt: Optional[str] = None,
         layer: Optional[int] = None, max_chunk: int = 1600000, nshard: int = 4,
         jobs: Optional[int] = None, n_clusters: int = 100, backend: str = "faiss",
         percent: float = -1.0, seed: int = 0, valid_percent: Optional[float] = None,
         ext: str = "wav,flac", sample_rate: int = 16000, min_samples: int = 0,
         skip_bad: bool = False, phones: Optional[str] = None, espnet: bool = False,
         uid_style: str = "basename", force: bool = False, quiet: bool = False) -> Dict[str, object]:
    """Run the pipeline (see the module docstring); ``quiet`` prints nothing to stdout.

    Returns:
        ``{"out_dir": Path, "ran": [unit names], "skipped": [unit names], "splits": [str],
        "report": dict, "report_text": str, "train_command": str, "data_dir": Path (the manifest folder
        the labels follow), "bad_files": {"manifest": n, "features": n, "reports": [Path]}}``.
    """
    if demo:
        if audio_root or out_dir or tsv_dir:
            raise UserError("--demo OUT_DIR takes no AUDIO_ROOT, OUT_DIR or --tsv-dir")
        out_dir = demo
    elif tsv_dir:
        if audio_root and out_dir:
            raise UserError("give either AUDIO_ROOT or --tsv-dir, not both")
        out_dir, audio_root = out_dir or audio_root, None  # `--tsv-dir M OUT`: argparse puts OUT first
    elif not (audio_root and out_dir):
        raise UserError("usage: fairseq-ext-labels AUDIO_ROOT OUT_DIR (or --tsv-dir DIR OUT_DIR, "
                        "or --demo OUT_DIR); see --help")
    if feature not in LABEL_RATE:
        raise UserError(f"--feature must be mfcc or hubert, got {feature!r}")
    if feature == "hubert" and (not ckpt or layer is None):
        raise UserError("--feature hubert needs --ckpt CHECKPOINT and --layer L")
    if feature == "hubert" and not os.path.isfile(ckpt):
        raise UserError(f"checkpoint {ckpt} does not exist")
    if nshard < 1 or n_clusters < 1:
        raise UserError("--nshard and --n-clusters must be >= 1")
    if sample_rate < 1:
        raise UserError(f"--sample-rate must be the audio's rate in Hz (features use it), got {sample_rate}")
    if phones and (not phones.endswith(".tsv") or not os.path.isfile(phones)):
        raise UserError(f"--phones {phones}: expected an existing .tsv file (uid<TAB>p1,p2,...)")

    quiet_loggers()
    out = Path(out_dir).resolve()
    check_writable_dir(out)  # a read-only or uncreatable folder: a sentence, before any work
    cfg = Settings(out, audio_root, tsv_dir, bool(demo), feature, ckpt, layer, max_chunk, nshard, n_clusters,
                   backend, percent, seed, valid_percent, ext, sample_rate, min_samples, skip_bad, phones,
                   espnet, uid_style)
    jobs = jobs or min(nshard, os.cpu_count() or 1)
    with folder_lock(out, "running fairseq-ext-labels") as lock, \
            Runner(out, jobs=jobs, force=force, lock=lock) as runner:
        pipe = LabelPipeline(cfg, runner)
        pipe.run()
        pipe.prune()
    report_text = (out / "quality.txt").read_text()
    command = pipe.training_command()
    bad = pipe.skipped_files()
    bad_text = ""
    if skip_bad:
        n_bad = bad["manifest"] + bad["features"]
        bad_text = (f"--skip-bad: left out {n_bad} bad audio file(s) ({bad['manifest']} when making the manifest, "
                    f"{bad['features']} when dumping features)"
                    + (f", listed in {', '.join(map(str, bad['reports']))}" if n_bad else "")
                    + f"; the labels follow {pipe.data_dir}/{{{','.join(pipe.splits)}}}.tsv")
        (logger.warning if n_bad else logger.info)("%s", bad_text)
    logger.info("finished: ran %d units, skipped %d; outputs in %s", len(runner.ran), len(runner.skipped), out)
    if not quiet:
        print(report_text)
        if bad_text:
            print(bad_text)
        print(f"Labels: {pipe.lab_dir}/{{{','.join(pipe.splits)}}}.km and {pipe.lab_dir}/dict.km.txt\n"
              f"Train HuBERT on them (one GPU; set distributed_world_size to your GPU count):\n  {command}")
    return {"out_dir": out, "ran": runner.ran, "skipped": runner.skipped, "splits": pipe.splits,
            "report": json.loads((out / "quality.json").read_text()), "report_text": report_text,
            "train_command": command, "data_dir": pipe.data_dir, "bad_files": bad}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio_root", nargs="?", help="folder of audio files (searched recursively)")
    p.add_argument("out_dir", nargs="?", help="output folder")
    p.add_argument("--demo", metavar="OUT_DIR", default=None,
                   help="generate a demo corpus in OUT_DIR/corpus and run everything on it")
    p.add_argument("--tsv-dir", default=None, help="use existing train.tsv (and valid.tsv) from this folder")
    g = p.add_argument_group("manifest")
    g.add_argument("--ext", default="wav,flac", help="audio extensions (default: %(default)s)")
    g.add_argument("--valid-percent", type=float, default=None,
                   help="fraction of files in valid.tsv (default 0.01; 0.1 with --demo; 0: no valid split)")
    g.add_argument("--sample-rate", type=int, default=16000, help="required sample rate in Hz (default: %(default)s)")
    g.add_argument("--min-samples", type=int, default=0, help="leave out shorter files")
    g.add_argument("--skip-bad", action="store_true",
                   help="leave out unusable audio files instead of failing (listed in bad_files.tsv and "
                        "feat/*.skipped.tsv); the labels then follow OUT_DIR/kept_manifest/{split}.tsv")
    g = p.add_argument_group("features")
    g.add_argument("--feature", choices=sorted(LABEL_RATE), default="mfcc", help="feature type (default: %(default)s)")
    g.add_argument("--ckpt", default=None, help="HuBERT checkpoint (--feature hubert)")
    g.add_argument("--layer", type=int, default=None, help="HuBERT layer (--feature hubert)")
    g.add_argument("--max-chunk", type=int, default=1600000, help="HuBERT: samples per forward chunk")
    g.add_argument("--nshard", type=int, default=4, help="shards per split (default: %(default)s; fewer for tiny splits)")
    g.add_argument("--jobs", type=int, default=None, help="parallel processes (default: min(nshard, cores))")
    g = p.add_argument_group("k-means and labels")
    g.add_argument("--n-clusters", type=int, default=100, help="number of clusters K (default: %(default)s)")
    g.add_argument("--backend", choices=["faiss", "sklearn"], default="faiss", help="k-means backend (default: %(default)s)")
    g.add_argument("--percent", type=float, default=-1.0,
                   help="fraction of train utterances for k-means (-1: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of the valid split and of k-means (default: %(default)s)")
    g = p.add_argument_group("report and export")
    g.add_argument("--phones", default=None, help="frame-level phone reference .tsv (uid<TAB>p1,p2,...)")
    g.add_argument("--espnet", action="store_true", help="also export ESPnet pseudo-label files")
    g.add_argument("--uid-style", choices=["basename", "relpath"], default="basename",
                   help="ESPnet utterance ids")
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
