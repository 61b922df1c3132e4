"""Sharded jobs on clusters: NSHARD/RANK from the environment, the SLURM array script, the local
parallel runner, and the `status` command (complete / missing / incomplete / stale)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from simple_kmeans import dump_mfcc_feature, dump_pitch_feature, run_shards, status
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import feat_paths, label_path, resolve_shard, shard_arg

SLURM = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4",
         "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}
SHARD_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
              "RANK", "WORLD_SIZE")


def _env(**kw):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **kw)


def _clean_env(monkeypatch):
    for var in SHARD_VARS:
        monkeypatch.delenv(var, raising=False)


def _files(d: Path):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


@pytest.fixture(scope="module")
def reference(demo_manifest, tmp_path_factory):
    """MFCC features of the demo manifest in 2 shards, dumped with positional NSHARD RANK."""
    out = tmp_path_factory.mktemp("ref")
    for rank in range(2):
        dump_mfcc_feature.main(str(demo_manifest), "train", 2, rank, str(out))
    return out


# --------------------------------------------------------------------------- resolve_shard


@pytest.mark.parametrize("environ,given,expected", [
    (SLURM, ("env", "env"), (4, 2)),
    (SLURM, ("-", None), (4, 2)),
    (SLURM, (8, "env"), (8, 2)),  # resubmitted ranks: NSHARD on the command line, rank from the array
    ({"RANK": "1", "WORLD_SIZE": "3"}, ("env", "env"), (3, 1)),
    ({**SLURM, "RANK": "0", "WORLD_SIZE": "2"}, ("env", "env"), (4, 2)),  # the SLURM array wins
    ({"SLURM_ARRAY_TASK_ID": "5", "RANK": "1", "WORLD_SIZE": "3"}, ("env", "env"), (3, 1)),  # one pair only
    ({}, (5, 4), (5, 4)),
    ({}, ("5", "0"), (5, 0)),
])
def test_resolve_shard_sources(environ, given, expected):
    assert resolve_shard(*given, environ=environ) == expected


@pytest.mark.parametrize("environ,given,message", [
    ({}, ("env", "env"), "none of SLURM_ARRAY_TASK_COUNT/SLURM_ARRAY_TASK_ID or WORLD_SIZE/RANK is set"),
    ({"RANK": "1"}, (4, "env"), None),
    ({"SLURM_ARRAY_TASK_ID": "4"}, (4, "env"), r"rank 4 \(from \$SLURM_ARRAY_TASK_ID\) is not in \[0, 4\).*--array=0-3"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, ("env", "env"), r"\$WORLD_SIZE|\$RANK='x' is not an integer"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "3",
      "SLURM_ARRAY_TASK_MAX": "7"}, ("env", "env"), r"exactly 0..1, but this array spans 3..7"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, ("env", "env"), r"nshard must be >= 1, got 0 \(from \$WORLD_SIZE\)"),
    ({}, (2, 2), r"rank 2 \(from the command line\)"),
])
def test_resolve_shard_errors_name_the_variable(environ, given, message):
    if message is None:  # rank from $RANK is fine
        assert resolve_shard(*given, environ=environ) == (4, 1)
        return
    with pytest.raises(UserError, match=message):
        resolve_shard(*given, environ=environ)


def test_shard_arg_keeps_numbers_and_accepts_env():
    assert [shard_arg(v) for v in ("3", "0", "env", "ENV", "-")] == [3, 0, "env", "env", "env"]
    with pytest.raises(argparse.ArgumentTypeError, match="integer or 'env'"):
        shard_arg("two")


# --------------------------------------------------------------------------- scripts with env ranks


def test_dumpers_take_rank_from_environment(demo_manifest, reference, tmp_path, monkeypatch, caplog):
    _clean_env(monkeypatch)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    with caplog.at_level(logging.INFO):
        dump_mfcc_feature.cli([str(demo_manifest), "train", "env", "env", str(tmp_path / "mfcc")])
    assert "rank from $SLURM_ARRAY_TASK_ID, nshard from $SLURM_ARRAY_TASK_COUNT" in caplog.text
    assert _files(tmp_path / "mfcc") == {k: v for k, v in _files(reference).items() if "_1_2" in k}
    # torchrun-style variables, pitch dumper, '-' spelling
    _clean_env(monkeypatch)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dump_pitch_feature.cli([str(demo_manifest), "train", "-", "-", str(tmp_path / "pitch"), "--frame-rate", "100"])
    dump_pitch_feature.main(str(demo_manifest), "train", 2, 0, str(tmp_path / "pitch_pos"), frame_rate=100)
    assert _files(tmp_path / "pitch") == _files(tmp_path / "pitch_pos")
    # a missing variable is a clear error (exit 2), no traceback, nothing written
    _clean_env(monkeypatch)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        dump_mfcc_feature.cli([str(demo_manifest), "train", "env", "env", str(tmp_path / "none")])
    assert e.value.code == 2 and "RANK is 'env' but none of" in caplog.text
    assert not (tmp_path / "none").exists()


def test_slurm_array_script(demo_manifest, reference, tmp_path):
    script = str(REPO / "scripts" / "slurm_array.sh")
    base = [sys.executable, "-m", "simple_kmeans.dump_mfcc_feature", str(demo_manifest), "train"]
    for rank, args in ((0, ["env", "env"]), (1, ["{nshard}", "{rank}"])):
        env = _env(SLURM_ARRAY_TASK_ID=str(rank), SLURM_ARRAY_TASK_COUNT="2",
                   SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="1", SLURM_CPUS_PER_TASK="1")
        r = subprocess.run(["bash", script, *base, *args, str(tmp_path / "feat")], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"task {rank} of 2" in r.stderr
    assert _files(tmp_path / "feat") == _files(reference)
    # resubmitting only rank 1 (--array=1): {nshard} would be wrong, so it is refused
    env = _env(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="1", SLURM_ARRAY_TASK_MIN="1",
               SLURM_ARRAY_TASK_MAX="1")
    r = subprocess.run(["bash", script, *base, "{nshard}", "{rank}", str(tmp_path / "x")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "give NSHARD as a number" in r.stderr
    # outside a SLURM array
    r = subprocess.run(["bash", script, "true"], env={k: v for k, v in _env().items() if not k.startswith("SLURM")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "sbatch --array" in r.stderr


def test_local_runner(demo_manifest, reference, tmp_path, monkeypatch, caplog):
    _clean_env(monkeypatch)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")  # a runner inside an array job: must not leak into shards
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "1")
    cmd = [sys.executable, "-m", "simple_kmeans.dump_mfcc_feature", str(demo_manifest), "train", "env", "env",
           str(tmp_path / "feat")]
    run_shards.cli(["2", "--jobs", "2", "--log-dir", str(tmp_path / "logs"), "--", *cmd])
    assert _files(tmp_path / "feat") == _files(reference)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    assert "shard 1 of 2: rank from $RANK" in (tmp_path / "logs" / "rank1.log").read_text()
    # a failing rank does not stop the others; the error names it and how to redo it
    code = "import os, sys; open(sys.argv[1] + os.environ['RANK'], 'w').close(); sys.exit(3 if {rank} == 1 else 0)"
    with pytest.raises(UserError, match=r"rank\(s\) 1 \(exit 3\) failed.*--ranks 1"):
        run_shards.main(3, ["--", sys.executable, "-c", code, str(tmp_path / "done")], jobs=2)
    assert sorted(p.name for p in tmp_path.glob("done*")) == ["done0", "done1", "done2"]
    assert run_shards.parse_ranks("0-2,5", 8) == [0, 1, 2, 5] and run_shards.parse_ranks("", 8) == []
    with pytest.raises(UserError, match=r"not in \[0, 4\)"):
        run_shards.parse_ranks("3-4", 4)


# --------------------------------------------------------------------------- status


def _states(rows):
    return [r.state for r in rows]


def _age(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_status_of_feature_shards(demo_manifest, reference, tmp_path, capsys):
    man, feat = tmp_path / "man", tmp_path / "feat"
    shutil.copytree(demo_manifest, man)
    shutil.copytree(reference, feat)
    rows = status.main("features", tsv_dir=str(man), split="train", nshard=2, feat_dir=str(feat))
    assert _states(rows) == ["complete", "complete"]
    assert "features  train 0/2      complete   6 utterances" in capsys.readouterr().out
    npy0, len0 = feat_paths(feat, "train", 0, 2)
    npy1, len1 = feat_paths(feat, "train", 1, 2)
    # manifest newer than shard 0 -> stale; shard 1 without its .len (killed before the commit) -> incomplete
    _age(npy0, 10)
    _age(len0, 10)
    len1.unlink()
    assert _states(status.feature_status(str(man), "train", 2, str(feat))) == ["stale", "incomplete"]
    status.main("features", tsv_dir=str(man), split="train", nshard=2, feat_dir=str(feat), todo=True)
    assert capsys.readouterr().out == "0,1\n"
    with pytest.raises(SystemExit) as e:
        status.main("features", tsv_dir=str(man), split="train", nshard=2, feat_dir=str(feat), check=True, quiet=True)
    assert e.value.code == 1
    # .npy and .len that disagree -> incomplete; only a temporary file -> incomplete; nothing -> missing
    shutil.copy(reference / len0.name, len0)
    len1.write_text("5\n")
    rows = status.feature_status(str(man), "train", 2, str(feat))
    assert rows[1].state == "incomplete" and "inconsistent" in rows[1].detail
    npy1.unlink()
    len1.unlink()
    (feat / f".{npy1.name}.tmp999999").write_bytes(b"\0" * 10)
    rows = status.feature_status(str(man), "train", 2, str(feat))
    assert rows[1].state == "incomplete" and "temporary" in rows[1].detail
    (feat / f".{npy1.name}.tmp999999").unlink()
    assert _states(status.feature_status(str(man), "train", 2, str(feat))) == ["complete", "missing"]
    # a shard made from another manifest (other line count) -> stale
    lines = (man / "train.tsv").read_text().splitlines()
    (man / "train.tsv").write_text("\n".join(lines[:-2]) + "\n")  # 10 files: shard 0 holds 5
    _age(man / "train.tsv", 100)
    rows = status.feature_status(str(man), "train", 2, str(feat))
    assert rows[0].state == "stale" and "another manifest" in rows[0].detail
    # CLI: --json and --check
    r = subprocess.run([sys.executable, "-m", "simple_kmeans.status", "features", str(demo_manifest), "train", "2",
                        str(reference), "--json", "--check"], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [d["state"] for d in json.loads(r.stdout)] == ["complete", "complete"]


def _pipeline(demo_corpus, out: Path):
    from conftest import write_manifest
    from simple_kmeans import pipeline

    files = sorted((demo_corpus / "wav").rglob("*.wav"))[:6]
    write_manifest(demo_corpus / "wav", out / "man" / "train.tsv", files)
    return pipeline.main(str(out / "o"), tsv_dir=str(out / "man"), nshard=2, jobs=1, n_clusters=4, quiet=True)


def test_status_of_label_shards_and_pipeline_folder(demo_corpus, tmp_path, capsys):
    _pipeline(demo_corpus, tmp_path)
    out = tmp_path / "o"
    rows = status.main("pipeline", out_dir=str(out), quiet=True)
    assert [(r.unit, r.state) for r in rows] == [
        ("features/train_0_2", "complete"), ("features/train_1_2", "complete"),
        ("labels/train_0_2", "complete"), ("labels/train_1_2", "complete"),
        ("kmeans", "complete"), ("merge/train", "complete")]
    feat, lab = out / "feat", out / "labels"
    assert _states(status.label_status(str(feat), "train", 2, str(lab), str(out / "km.mdl"))) == ["complete"] * 2
    # features touched after the labels: the stamps decide in a pipeline folder, as for fairseq-ext-labels
    # (nothing to redo); the stand-alone label check goes by modification times
    npy, lenp = feat_paths(feat, "train", 1, 2)
    os.utime(npy)
    assert [r.state for r in status.pipeline_status(str(out))] == ["complete"] * 6
    assert _states(status.label_status(str(feat), "train", 2, str(lab))) == ["complete", "stale"]
    # a manifest with another content (same files and counts): every unit made from it is stale
    tsv = tmp_path / "man" / "train.tsv"
    original = tsv.read_text()
    lines = original.splitlines(keepends=True)
    tsv.write_text(lines[0].rstrip("\n") + "/.\n" + "".join(lines[1:]))
    rows = {r.unit: r for r in status.pipeline_status(str(out))}
    assert rows["features/train_1_2"].state == "stale" and "another manifest" in rows["features/train_1_2"].detail
    assert all(r.state == "stale" for r in rows.values()), [(r.unit, r.state) for r in rows.values()]
    tsv.write_text(original)
    assert [r.state for r in status.pipeline_status(str(out))] == ["complete"] * 6
    # a label shard that does not match its features frame for frame
    km0 = label_path(lab, "train", 0, 2)
    km0.write_text("\n".join(line.split(" ", 1)[1] for line in km0.read_text().splitlines()) + "\n")
    rows = status.label_status(str(feat), "train", 2, str(lab))
    assert rows[0].state == "stale" and "labels but" in rows[0].detail
    # a stamp made from another k-means model
    stamp = out / ".stamps" / "kmeans.json"
    data = json.loads(stamp.read_text())
    data["signature"] = "0" * 20
    stamp.write_text(json.dumps(data))
    rows = {r.unit: r for r in status.pipeline_status(str(out))}
    assert rows["features/train_1_2"].state == "complete"
    assert rows["labels/train_1_2"].state == "stale" and "another k-means model" in rows["labels/train_1_2"].detail
    # a deleted label shard is missing: --todo lists the label ranks to redo
    label_path(lab, "train", 1, 2).unlink()
    status.main("pipeline", out_dir=str(out), todo=True)
    printed = capsys.readouterr().out.splitlines()
    assert "labels train 0,1" in printed
