"""Usage: fairseq-ext-status features TSV_DIR SPLIT NSHARD FEAT_DIR [--todo] [--check] [--json]
                                [--write-kept-manifest DIR]
       fairseq-ext-status labels FEAT_DIR SPLIT NSHARD LAB_DIR [--km-path KM] [--todo] [--check] [--json]
       fairseq-ext-status pipeline OUT_DIR [--nshard N] [--todo] [--check] [--json]
       (or python -m simple_kmeans.status ...)

Report which shards of a sharded step are complete, missing, incomplete or stale: the feature
shards FEAT_DIR/SPLIT_RANK_NSHARD.npy/.len of dump_mfcc_feature / dump_hubert_feature /
dump_pitch_feature, the label shards LAB_DIR/SPLIT_RANK_NSHARD.km of dump_km_label, or every
step of a fairseq-ext-labels output folder (with its stamps).

States (one line per shard, on stdout):
  complete    in place, consistent and not older than its inputs
  missing     no output at all
  incomplete  a running, killed or failed job: only temporary files (.NAME.tmpPID), a .npy
              without its .len (the .len is renamed into place last: it marks the shard
              complete), or a .npy and .len that disagree; the next step refuses such a shard
  stale       complete but out of date: the manifest is newer than the feature shard, or the
              shard holds another number of utterances than its part of the manifest (minus the
              files a --skip-bad run left out); features or the k-means model newer than the
              labels, or labels that do not match their features frame for frame
For a pipeline folder, the pipeline's stamps (OUT_DIR/.stamps) decide instead of modification
times, as fairseq-ext-labels itself does: a unit is stale when it has no stamp or its stamp was
made from other inputs than the current ones (another manifest content, other features, another
k-means model); the content checks above (counts, frames) still apply. Elsewhere staleness uses
modification times: copying outputs without keeping times (cp without -p) can make them look
stale; rerun the step or touch the outputs.

--todo prints only the ranks that are not complete, comma-separated, to resubmit them:
  sbatch --array=$(fairseq-ext-status features man/ train 16 feat/ --todo) scripts/slurm_array.sh ...
--check exits with status 1 unless every shard is complete.
--write-kept-manifest DIR (features, all shards complete) writes DIR/SPLIT.tsv: the manifest
minus the files --skip-bad runs left out, line for line aligned with the features and labels
(train fairseq with task.data=DIR).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from fairseq_ext.base.atomic import temp_files
from fairseq_ext.base.bad_audio import kept_entries, read_skipped_lines, skipped_path, write_kept_manifest
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, manifest_path, read_manifest
from fairseq_ext.base.shards import feat_paths, label_path, read_lengths, shard_stem
from fairseq_ext.base.steps import file_digest, file_fingerprint, read_stamp

logger = logging.getLogger("status")

STATES = ("complete", "missing", "incomplete", "stale")


@dataclass
class ShardStatus:
    """State of one unit of work: a shard (``rank`` of ``nshard``) or a whole step (``rank`` None)."""

    step: str
    split: str
    rank: Optional[int]
    nshard: Optional[int]
    state: str
    detail: str = ""

    @property
    def unit(self) -> str:
        """The pipeline's unit name, e.g. ``features/train_0_4``, ``kmeans``, ``merge/train``."""
        if self.rank is None:
            return f"{self.step}/{self.split}" if self.split else self.step
        return f"{self.step}/{self.split}_{self.rank}_{self.nshard}"

    def mark(self, state: str, detail: str) -> "ShardStatus":
        self.state, self.detail = state, detail
        return self


def _mtime(path: os.PathLike | str) -> int:
    return os.stat(path).st_mtime_ns


def _absent(st: ShardStatus, outputs: Iterable[Path]) -> ShardStatus:
    temps = [t.name for p in outputs for t in temp_files(p)]
    if temps:
        return st.mark("incomplete", f"only temporary files ({', '.join(temps)}): a job is running or was "
                                     f"killed; rerun it")
    return st.mark("missing", "")


def feature_shard(manifest: Optional[Manifest], feat_dir: os.PathLike | str, split: str, rank: int,
                  nshard: int, use_mtimes: bool = True) -> ShardStatus:
    """State of feature shard ``rank``/``nshard`` (checked against ``manifest`` when given; with
    ``use_mtimes``, a manifest newer than the shard makes it stale)."""
    st = ShardStatus("features", split, rank, nshard, "complete")
    npy, lenp = feat_paths(feat_dir, split, rank, nshard)
    stem = shard_stem(feat_dir, split, rank, nshard)
    others = [npy, skipped_path(feat_dir, split, rank, nshard), stem.with_name(stem.name + ".pitch_stats.json")]
    if not lenp.is_file():
        if npy.is_file():
            return st.mark("incomplete", f"{npy.name} without {lenp.name}: the job was killed or failed "
                                         f"before the shard was complete; rerun it")
        return _absent(st, [lenp, *others])
    if not npy.is_file():
        return st.mark("incomplete", f"{lenp.name} without {npy.name} (deleted?); rerun the shard")
    try:
        lengths = read_lengths(lenp)
        feats = np.load(npy, mmap_mode="r")
    except (UserError, ValueError, OSError) as e:
        return st.mark("incomplete", f"unreadable: {e}; rerun the shard")
    if feats.ndim != 2 or feats.shape[0] != int(lengths.sum()):
        return st.mark("incomplete", f"inconsistent: {npy.name} has shape {feats.shape} but {lenp.name} sums "
                                     f"to {int(lengths.sum())} frames; rerun the shard")
    n_skipped = len(read_skipped_lines(skipped_path(feat_dir, split, rank, nshard)))
    if manifest is not None:
        if use_mtimes and _mtime(manifest.path) > _mtime(lenp):
            return st.mark("stale", f"{manifest.path} is newer than {lenp.name}; rerun the shard")
        try:
            expected = len(kept_entries(manifest, nshard, rank, feat_dir, split))
        except UserError as e:
            return st.mark("stale", f"{e}")
        if len(lengths) != expected:
            return st.mark("stale", f"{len(lengths)} utterances but this shard of {manifest.path.name} has "
                                    f"{expected}: made from another manifest; rerun the shard")
    return st.mark("complete", f"{len(lengths)} utterances, {feats.shape[0]} frames"
                               + (f", {n_skipped} skipped (see {skipped_path('', split, rank, nshard)})"
                                  if n_skipped else ""))


def label_shard(feat_dir: os.PathLike | str, lab_dir: os.PathLike | str, split: str, rank: int, nshard: int,
                km_path: Optional[os.PathLike | str] = None, use_mtimes: bool = True) -> ShardStatus:
    """State of label shard ``rank``/``nshard``, checked against its feature shard (and, with
    ``use_mtimes``, stale when the features or the k-means model are newer)."""
    st = ShardStatus("labels", split, rank, nshard, "complete")
    km = label_path(lab_dir, split, rank, nshard)
    if not km.is_file():
        return _absent(st, [km])
    npy, lenp = feat_paths(feat_dir, split, rank, nshard)
    if not (npy.is_file() and lenp.is_file()):
        return st.mark("stale", f"its feature shard {lenp.with_suffix('')} is not complete")
    if use_mtimes and max(_mtime(npy), _mtime(lenp)) > _mtime(km):
        return st.mark("stale", f"the feature shard is newer than {km.name}; rerun dump_km_label")
    if use_mtimes and km_path is not None and Path(km_path).is_file() and _mtime(km_path) > _mtime(km):
        return st.mark("stale", f"{km_path} is newer than {km.name}; rerun dump_km_label")
    try:
        lengths = read_lengths(lenp)
    except UserError as e:
        return st.mark("stale", f"its feature shard is unreadable: {e}")
    counts = np.array([len(line.split()) for line in km.read_bytes().splitlines()], dtype=np.int64)
    if len(counts) != len(lengths):
        return st.mark("stale", f"{len(counts)} lines but {lenp.name} lists {len(lengths)} utterances; "
                                f"rerun dump_km_label")
    diff = np.flatnonzero(counts != lengths)
    if len(diff):
        i = int(diff[0])
        return st.mark("stale", f"line {i + 1} has {counts[i]} labels but {lenp.name} says {lengths[i]} frames; "
                                f"rerun dump_km_label")
    return st.mark("complete", f"{len(counts)} utterances, {int(counts.sum())} labels")


def feature_status(tsv_dir: Optional[str], split: str, nshard: int, feat_dir: str) -> List[ShardStatus]:
    """States of all feature shards of ``split``."""
    manifest = read_manifest(manifest_path(tsv_dir, split)) if tsv_dir else None
    if manifest is not None:
        manifest.shard(nshard, 0)  # validates nshard
    return [feature_shard(manifest, feat_dir, split, r, nshard) for r in range(nshard)]


def label_status(feat_dir: str, split: str, nshard: int, lab_dir: str,
                 km_path: Optional[str] = None) -> List[ShardStatus]:
    """States of all label shards of ``split``."""
    return [label_shard(feat_dir, lab_dir, split, r, nshard, km_path) for r in range(nshard)]


# --------------------------------------------------------------------------- pipeline folders


def _read_stamps(stamp_dir: Path) -> Dict[str, dict]:
    """The pipeline's stamps by unit name (``features/train_0_4``, ``kmeans``, ...)."""
    stamps = {}
    for path in sorted(stamp_dir.glob("*.json")) if stamp_dir.is_dir() else []:
        data = read_stamp(path)
        if data is not None:
            stamps[path.stem.replace("__", "/")] = data
    return stamps


def _infer_nshard(stamps: Dict[str, dict], feat_dir: Path, split: str) -> Optional[int]:
    """NSHARD of ``split`` from the pipeline's stamps, else from the feature file names."""
    pattern = re.compile(rf"^\.?{re.escape(split)}_(\d+)_(\d+)\.(?:npy|len)")
    found = [int(m.group(2)) for name in stamps if (m := pattern.match(name.split("/", 1)[-1] + ".npy"))
             and name.startswith("features/")]
    if not found and feat_dir.is_dir():
        found = [int(m.group(2)) for p in feat_dir.iterdir() if (m := pattern.match(p.name))]
    return max(set(found), key=found.count) if found else None


def _expected_features(stamp: Optional[dict], manifest: Manifest, nshard: int) -> Optional[dict]:
    """The ``inputs`` a feature unit's stamp must hold for the manifest's current content (None when
    the stamp does not say which dumper made it: stamps written before they named it)."""
    from simple_kmeans.pipeline import SHARD_KWARGS, audio_signature, feature_signature

    if not stamp or "func" not in stamp:
        return None
    settings = {k: v for k, v in stamp.get("kwargs", {}).items() if k not in SHARD_KWARGS}
    extra = {}
    if "ckpt_path" in settings:  # HuBERT features: the checkpoint file as it is now
        if not Path(settings["ckpt_path"]).is_file():
            return {"features": None}
        extra = {"ckpt": file_fingerprint(settings["ckpt_path"])}
    extra["audio"] = audio_signature(manifest)  # the audio files as they are now
    return {"features": feature_signature(file_digest(manifest.path), stamp["func"], settings, extra, nshard)}


def _check_stamp(st: ShardStatus, stamps: Dict[str, dict], expected_inputs: Optional[dict] = None,
                 what: str = "other features or another k-means model") -> ShardStatus:
    """Turn a complete unit stale when the pipeline's stamp is missing or made from other inputs."""
    if st.state != "complete":
        return st
    stamp = stamps.get(st.unit)
    if stamp is None:
        return st.mark("stale", "no pipeline stamp (an interrupted pipeline run, or written by hand): "
                                "fairseq-ext-labels will redo it")
    if expected_inputs is not None and stamp.get("inputs") != expected_inputs:
        return st.mark("stale", f"its stamp was made from other inputs than the current ones ({what})")
    return st


def pipeline_status(out_dir: str, nshard: Optional[int] = None) -> List[ShardStatus]:
    """States of every unit of a ``fairseq-ext-labels`` output folder (features, kmeans, labels, merge),
    decided by the pipeline's stamps and the outputs' contents, not by modification times."""
    from simple_kmeans.pipeline import label_signature

    out = Path(out_dir)
    stamps = _read_stamps(out / ".stamps")
    tsv_dirs = [s["kwargs"]["tsv_dir"] for n, s in stamps.items() if n.startswith("features/")
                and "tsv_dir" in s.get("kwargs", {})]
    tsv_dir = Path(tsv_dirs[0]) if tsv_dirs else out / "manifest"
    feat_dir, lab_dir, km_path = out / "feat", out / "labels", out / "km.mdl"
    splits = [s for s in ("train", "valid") if manifest_path(tsv_dir, s).is_file()]
    if not splits:
        raise UserError(f"no manifest in {tsv_dir}: is {out} a fairseq-ext-labels output folder?")
    rows: List[ShardStatus] = []
    feat_sig: Dict[str, Optional[str]] = {}
    label_sig: Dict[str, List[Optional[str]]] = {}
    km_stamp = stamps.get("kmeans")
    for split in splits:
        manifest = read_manifest(manifest_path(tsv_dir, split))
        n = _infer_nshard(stamps, feat_dir, split) or min(nshard or 4, len(manifest))
        sigs = []
        for r in range(n):
            st = feature_shard(manifest, feat_dir, split, r, n, use_mtimes=False)
            stamp = stamps.get(st.unit)
            expected = _expected_features(stamp, manifest, n)
            sigs.append((expected or (stamp or {}).get("inputs") or {}).get("features"))
            rows.append(_check_stamp(st, stamps, expected, "another manifest or other feature settings"))
        feat_sig[split] = sigs[0] if sigs and len(set(sigs)) == 1 else None
        label_sig[split] = []
        for r in range(n):
            st = label_shard(feat_dir, lab_dir, split, r, n, km_path, use_mtimes=False)
            expected = None
            if sigs[r] and km_stamp:
                expected = {"labels": label_signature(sigs[r], km_stamp.get("signature"))}
            label_sig[split].append((expected or (stamps.get(st.unit) or {}).get("inputs") or {}).get("labels"))
            rows.append(_check_stamp(st, stamps, expected))
    # k-means: one unit, on the train features
    st = ShardStatus("kmeans", "", None, None, "complete", str(km_path))
    if not km_path.is_file():
        _absent(st, [km_path])
    rows.append(_check_stamp(st, stamps, {"features": feat_sig["train"]} if feat_sig.get("train") else None,
                             "other train features"))
    for split in splits:
        merged = lab_dir / f"{split}.km"
        st = ShardStatus("merge", split, None, None, "complete", str(merged))
        if not merged.is_file():
            _absent(st, [merged])
        sigs = label_sig[split]
        expected = {"labels": sigs[0]} if sigs and sigs[0] and len(set(sigs)) == 1 else None
        rows.append(_check_stamp(st, stamps, expected, "other label shards"))
    return rows


# --------------------------------------------------------------------------- report


def format_report(rows: Sequence[ShardStatus]) -> str:
    """One line per unit, then a summary per step and split."""
    lines = []
    for r in rows:
        where = f"{r.split} {r.rank}/{r.nshard}" if r.rank is not None else r.split or "-"
        lines.append(f"{r.step:<9} {where:<14} {r.state:<10} {r.detail}".rstrip())
    groups: Dict[tuple, Dict[str, int]] = {}
    for r in rows:
        counts = groups.setdefault((r.step, r.split), {})
        counts[r.state] = counts.get(r.state, 0) + 1
    for (step, split), counts in groups.items():
        summary = ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts)
        lines.append(f"# {step} {split}: {summary}".rstrip())
    return "\n".join(lines) + "\n"


def todo_ranks(rows: Sequence[ShardStatus]) -> str:
    """Ranks not complete, comma-separated (``sbatch --array`` syntax)."""
    return ",".join(str(r.rank) for r in rows if r.state != "complete" and r.rank is not None)


def main(step: str, split: Optional[str] = None, nshard: Optional[int] = None, tsv_dir: Optional[str] = None,
         feat_dir: Optional[str] = None, lab_dir: Optional[str] = None, out_dir: Optional[str] = None,
         km_path: Optional[str] = None, write_kept_manifest_dir: Optional[str] = None, todo: bool = False,
         check: bool = False, as_json: bool = False, quiet: bool = False) -> List[ShardStatus]:
    """Print the states of ``step`` (``features``, ``labels`` or ``pipeline``) and return them."""
    if step == "features":
        rows = feature_status(tsv_dir, split, nshard, feat_dir)
    elif step == "labels":
        rows = label_status(feat_dir, split, nshard, lab_dir, km_path)
    elif step == "pipeline":
        rows = pipeline_status(out_dir, nshard)
    else:
        raise UserError(f"unknown step {step!r}: use features, labels or pipeline")
    if write_kept_manifest_dir:
        bad = [r.unit for r in rows if r.state != "complete"]
        if bad:
            raise UserError(f"cannot write the kept-files manifest: not complete: {', '.join(bad)}")
        write_kept_manifest(tsv_dir, split, nshard, feat_dir, write_kept_manifest_dir)
    if not quiet:
        if todo:
            if step == "pipeline":
                for key in dict.fromkeys((r.step, r.split) for r in rows):
                    ranks = todo_ranks([r for r in rows if (r.step, r.split) == key])
                    if ranks:
                        print(f"{key[0]} {key[1]} {ranks}")
            else:
                print(todo_ranks(rows))
        elif as_json:
            print(json.dumps([{**asdict(r), "unit": r.unit} for r in rows], indent=1))
        else:
            print(format_report(rows), end="")
    if check and any(r.state != "complete" for r in rows):
        raise SystemExit(1)
    return rows


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True, metavar="{features,labels,pipeline}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--todo", action="store_true", help="print only the ranks that are not complete")
    common.add_argument("--check", action="store_true", help="exit with status 1 unless all are complete")
    common.add_argument("--json", dest="as_json", action="store_true", help="print the states as JSON")
    p = sub.add_parser("features", parents=[common], help="feature shards (.npy/.len)")
    p.add_argument("tsv_dir", help="folder with SPLIT.tsv")
    p.add_argument("split")
    p.add_argument("nshard", type=int)
    p.add_argument("feat_dir")
    p.add_argument("--write-kept-manifest", dest="write_kept_manifest_dir", metavar="DIR", default=None,
                   help="write DIR/SPLIT.tsv without the files --skip-bad runs left out")
    p = sub.add_parser("labels", parents=[common], help="label shards (.km)")
    p.add_argument("feat_dir")
    p.add_argument("split")
    p.add_argument("nshard", type=int)
    p.add_argument("lab_dir")
    p.add_argument("--km-path", default=None, help="k-means model: labels older than it are stale")
    p = sub.add_parser("pipeline", parents=[common], help="every step of a fairseq-ext-labels folder")
    p.add_argument("out_dir")
    p.add_argument("--nshard", type=int, default=None, help="shards per split when no shard exists yet")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
