"""Fault tolerance of the dumping jobs: SIGKILL at seeded points, corrupted audio (--skip-bad),
a full disk and an unwritable output folder. Nothing half-written is ever taken as complete."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, write_manifest
from fairseq_ext.base import bad_audio as skip_bad
from simple_kmeans import dump_mfcc_feature, dump_pitch_feature, status
from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.bad_audio import skipped_path
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.shards import load_feat_shard

DUMPERS = {
    "mfcc": ("simple_kmeans.dump_mfcc_feature", {}),
    "pitch": ("simple_kmeans.dump_pitch_feature", {"frame_rate": 100}),
}
EVENTS = ("read_audio", "replace", "fsync", "unlink")  # the points a job can be killed at

HARNESS = r"""
import importlib, json, os, signal, sys
module, kill_at, kwargs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
d = importlib.import_module(module)
import fairseq_ext.base.bad_audio as reader  # the dumpers read audio through BadAudio.read
count = [0]
def hook(real):
    def wrapper(*a, **k):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return wrapper
reader.read_audio = hook(reader.read_audio)
for name in ("replace", "fsync", "unlink"):
    setattr(os, name, hook(getattr(os, name)))
d.main(**kwargs)
"""


def _files(d: Path):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


def _kwargs(name: str, tsv_dir: Path, feat_dir: Path, **kw):
    return {"tsv_dir": str(tsv_dir), "split": "train", "nshard": 1, "rank": 0, "feat_dir": str(feat_dir),
            **DUMPERS[name][1], **kw}


def _module(name: str):
    return {"mfcc": dump_mfcc_feature, "pitch": dump_pitch_feature}[name]


def _count_events(name: str, kwargs: dict, monkeypatch) -> int:
    """Run the dump in this process, counting the hooked calls the harness can kill at."""
    count = [0]
    module = _module(name)

    def hook(real):
        def wrapper(*a, **k):
            count[0] += 1
            return real(*a, **k)
        return wrapper

    with monkeypatch.context() as m:
        m.setattr(skip_bad, "read_audio", hook(skip_bad.read_audio))  # the dumpers read audio through BadAudio.read
        for fn in EVENTS[1:]:
            m.setattr(os, fn, hook(getattr(os, fn)))
        module.main(**kwargs)
    return count[0]


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_sigkill_at_seeded_points_then_rerun_is_byte_identical(name, demo_manifest, tmp_path, monkeypatch):
    module = _module(name)
    ref = tmp_path / "ref"
    module.main(**_kwargs(name, demo_manifest, ref))
    reference = _files(ref)
    # every kill happens during a rerun over complete outputs (the hardest case: old and new files)
    counted = tmp_path / "counted"
    shutil.copytree(ref, counted)
    n_events = _count_events(name, _kwargs(name, demo_manifest, counted), monkeypatch)
    assert _files(counted) == reference and n_events > 12
    rng = random.Random(f"kill-{name}")
    # seeded points, plus the first call (old outputs untouched) and the last (the rename of the .len)
    points = sorted(set(rng.sample(range(2, n_events), 3)) | {1, n_events})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    manifest = read_manifest(demo_manifest / "train.tsv")
    states = {}
    for point in points:
        out = tmp_path / f"kill{point}"
        shutil.copytree(ref, out)
        r = subprocess.run([sys.executable, "-c", HARNESS, DUMPERS[name][0], str(point),
                            json.dumps(_kwargs(name, demo_manifest, out))],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == -signal.SIGKILL, (point, r.stderr[-2000:])
        st = status.feature_shard(manifest, out, "train", 0, 1)
        states[point] = st.state
        if st.state == "complete":  # killed before the old outputs were touched
            assert {k: v for k, v in _files(out).items() if not k.startswith(".")} == reference, point
        else:
            assert st.state in ("missing", "incomplete"), (point, st)
            with pytest.raises(UserError, match="does not exist|inconsistent|cannot read"):
                load_feat_shard(out, "train", 0, 1)  # what learn_kmeans and dump_km_label read through
        module.main(**_kwargs(name, demo_manifest, out))
        assert _files(out) == reference, point  # same names (no temporary left) and same bytes
    assert states[1] == "complete" and states[n_events] == "incomplete", states


def test_next_step_refuses_an_incomplete_shard(demo_manifest, tmp_path):
    """A .npy without its .len (killed between the two renames) is refused by k-means and labelling."""
    from simple_kmeans import learn_kmeans

    feat = tmp_path / "feat"
    npy, lenp = dump_mfcc_feature.main(str(demo_manifest), "train", 1, 0, str(feat))
    lenp.unlink()
    assert status.feature_shard(None, feat, "train", 0, 1).state == "incomplete"
    with pytest.raises(UserError, match=r"train_0_1\.len does not exist"):
        learn_kmeans.main(str(feat), "train", 1, str(tmp_path / "km.mdl"), 4)
    assert not (tmp_path / "km.mdl").exists()


# --------------------------------------------------------------------------- corrupted audio


def _corrupt_corpus(demo_corpus: Path, tmp_path: Path):
    """A copy of 8 demo files with file 2 overwritten by garbage and file 6 truncated (after the manifest)."""
    wav = tmp_path / "wav"
    files = sorted((demo_corpus / "wav").rglob("*.wav"))[:8]
    copies = []
    for f in files:
        dest = wav / f.relative_to(demo_corpus / "wav")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
        copies.append(dest)
    write_manifest(wav, tmp_path / "man" / "train.tsv", copies)
    copies[1].write_bytes(b"RIFF\x10\x00\x00\x00garbage, not a wav file" * 20)
    data = copies[5].read_bytes()
    copies[5].write_bytes(data[: len(data) // 2])
    return tmp_path / "man", [copies[1], copies[5]]


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_corrupted_audio_without_skip_bad_is_a_clear_error(name, demo_corpus, tmp_path, caplog):
    man, bad = _corrupt_corpus(demo_corpus, tmp_path)
    argv = [str(man), "train", "2", "0", str(tmp_path / "feat")]
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        _module(name).cli(argv)
    assert e.value.code == 2
    assert f"train.tsv:3: cannot read audio file {bad[0]}" in caplog.text and "--skip-bad" in caplog.text
    assert "Traceback" not in caplog.text
    assert status.feature_shard(read_manifest(man / "train.tsv"), tmp_path / "feat", "train", 0, 2).state == "missing"
    assert list((tmp_path / "feat").iterdir()) == []


def test_skip_bad_reports_and_keeps_labels_aligned(demo_corpus, tmp_path):
    from simple_kmeans import dump_km_label, learn_kmeans, merge_labels

    man, bad = _corrupt_corpus(demo_corpus, tmp_path)
    feat, lab, kept_dir = tmp_path / "feat", tmp_path / "lab", tmp_path / "kept"
    for rank in range(2):
        dump_mfcc_feature.cli([str(man), "train", "2", str(rank), str(feat), "--skip-bad"])
    reports = [skipped_path(feat, "train", r, 2).read_text().splitlines() for r in range(2)]
    assert reports[0][0] == "line\trelpath\tn_samples\tproblem"
    assert [(row.split("\t")[0], Path(row.split("\t")[1]).name) for row in reports[0][1:]] == [("3", bad[0].name)]
    assert [(row.split("\t")[0], Path(row.split("\t")[1]).name) for row in reports[1][1:]] == [("7", bad[1].name)]
    assert "samples but the manifest says" in reports[1][1]
    rows = status.main("features", tsv_dir=str(man), split="train", nshard=2, feat_dir=str(feat),
                       write_kept_manifest_dir=str(kept_dir), quiet=True)
    assert [r.state for r in rows] == ["complete", "complete"] and "1 skipped" in rows[0].detail
    kept = read_manifest(kept_dir / "train.tsv")
    assert len(kept) == 6 and not {bad[0].name, bad[1].name} & {Path(e.relpath).name for e in kept.entries}
    # the skip-bad shards hold exactly the features of the kept files, in order
    dump_mfcc_feature.main(str(kept_dir), "train", 1, 0, str(tmp_path / "kept_feat"))
    whole = load_feat_shard(tmp_path / "kept_feat", "train", 0, 1)
    parts = [load_feat_shard(feat, "train", r, 2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    # labels: one line per kept manifest line, as many labels as frames; fairseq's HubertDataset agrees
    learn_kmeans.main(str(feat), "train", 2, str(tmp_path / "km.mdl"), 4, niter=5)
    for rank in range(2):
        dump_km_label.main(str(feat), "train", str(tmp_path / "km.mdl"), 2, rank, str(lab))
    merged = merge_labels.main(str(lab), "train", 2, feat_dir=str(feat), n_clusters=4)["labels"]
    from fairseq.data.audio.hubert_dataset import HubertDataset

    ds = HubertDataset(str(kept_dir / "train.tsv"), 16000, [str(merged)], [100], [-1], [-1], shuffle=False)
    assert len(ds) == 6
    for i in range(len(ds)):
        n_labels = len(ds.get_label(i, 0).split())
        assert n_labels == 1 + (ds.sizes[i] - 400) // 160 == whole[1][i]


# --------------------------------------------------------------------------- full disk, unwritable folder


@pytest.mark.parametrize("name,target", [("mfcc", ".npy"), ("mfcc", ".len"), ("pitch", ".npy"),
                                         ("pitch", ".pitch_stats.json")])
def test_full_disk_is_a_clear_error_and_nothing_is_complete(name, target, demo_manifest, tmp_path, caplog):
    """The temporary file of one output is /dev/full: its writes fail with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    feat = tmp_path / "feat"
    _module(name).main(**_kwargs(name, demo_manifest, feat))  # complete outputs of an earlier run
    out = feat / f"train_0_1{target}"
    os.symlink("/dev/full", feat / f".{out.name}.tmp{os.getpid()}")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        _module(name).cli([str(demo_manifest), "train", "1", "0", str(feat)]
                          + (["--frame-rate", "100"] if name == "pitch" else []))
    assert e.value.code == 2
    assert f"cannot write {out}: No space left on device (the disk is full" in caplog.text
    assert "Traceback" not in caplog.text
    assert status.feature_shard(read_manifest(demo_manifest / "train.tsv"), feat, "train", 0, 1).state != "complete"
    assert not (feat / "train_0_1.len").exists()
    assert not [p for p in feat.iterdir() if p.name.startswith(".")]  # temporary files removed


def test_atomic_output_on_full_disk_keeps_the_previous_file(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "x.txt"
    path.write_text("old\n")
    os.symlink("/dev/full", tmp_path / f".x.txt.tmp{os.getpid()}")
    with pytest.raises(UserError, match="cannot write .*x.txt: No space left on device"):
        with atomic_output(path) as f:
            f.write("new\n" * 10)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


@pytest.mark.parametrize("module", ["simple_kmeans.dump_mfcc_feature", "simple_kmeans.dump_pitch_feature"])
def test_unwritable_output_folder_is_a_clear_error(module, demo_manifest, tmp_path):
    """An output folder under a regular file (ENOTDIR; chmod does not stop root)."""
    (tmp_path / "file").write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", module, str(demo_manifest), "train", "1", "0",
                        str(tmp_path / "file" / "feat")], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
    assert r.returncode == 2, r.stderr
    assert "feat is not writable" in r.stderr and "Not a directory" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_errors_name_the_output(tmp_path):
    """A folder that cannot be created, and a file that cannot be created, give UserErrors."""
    from fairseq_ext.base.atomic import NpyStreamWriter

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create output folder .*file/sub.*Not a directory"):
        NpyStreamWriter(tmp_path / "file" / "sub" / "a.npy", dim=2)
    with pytest.raises(UserError, match="cannot create output folder"):
        with atomic_output(tmp_path / "file" / "a.txt"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_hubert_features_skip_bad_with_rank_from_environment(demo_corpus, tmp_path, monkeypatch):
    from simple_kmeans import dump_hubert_feature
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    ckpt = make_tiny_hubert_checkpoint(tmp_path / "hubert.pt", label_rate=50)
    man, bad = _corrupt_corpus(demo_corpus, tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)
    feat = tmp_path / "feat"
    with pytest.raises(UserError, match=r"train.tsv:3: cannot read audio file .*--skip-bad"):
        dump_hubert_feature.main(str(man), "train", str(ckpt), 1, "env", "env", str(feat), device="cpu")
    assert status.feature_shard(None, feat, "train", 0, 2).state == "missing"
    dump_hubert_feature.main(str(man), "train", str(ckpt), 1, "env", "env", str(feat), device="cpu", skip_bad=True)
    report = skipped_path(feat, "train", 0, 2).read_text().splitlines()
    assert [row.split("\t")[0] for row in report[1:]] == ["3"]
    feats, lengths = load_feat_shard(feat, "train", 0, 2)
    # the same as dumping the three good files of this shard on their own
    m = read_manifest(man / "train.tsv")
    good = [Path(m.audio_path(e)) for e in m.shard(2, 0) if e.line != 3]
    write_manifest(Path(m.root), tmp_path / "good" / "train.tsv", good)
    dump_hubert_feature.main(str(tmp_path / "good"), "train", str(ckpt), 1, 1, 0, str(tmp_path / "gfeat"), device="cpu")
    g_feats, g_lengths = load_feat_shard(tmp_path / "gfeat", "train", 0, 1)
    np.testing.assert_array_equal(lengths, g_lengths)
    np.testing.assert_allclose(feats, g_feats, atol=1e-5)


PIPELINE_HARNESS = r"""
import sys
from simple_kmeans import pipeline
pipeline.PARALLEL_MIN_AUDIO_S = 0.0  # the tiny corpus in worker processes
pipeline.cli(sys.argv[1:])
"""


def _children() -> dict:
    """{pid: parent pid} of every process (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def _descendants(pid: int) -> set:
    parents, found, todo = _children(), set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p and c not in found}
        found |= kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _holds(pid: int, path: Path) -> bool:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return str(path) in targets


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_parallel_pipeline_leaves_no_process_and_lock_held_until_then(demo_corpus, tmp_path):
    """kill -9 of `fairseq-ext-labels --jobs 2`: its spawned workers hold the folder lock while they live
    and die with the parent; afterwards no process of the killed run is alive (checked by pid)."""
    import fcntl

    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", PIPELINE_HARNESS, str(demo_corpus / "wav"), str(out),
                             "--jobs", "2", "--nshard", "4", "--n-clusters", "8", "--valid-percent", "0"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w"))
    workers = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            kids = _descendants(proc.pid)
            workers = {p for p in kids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}
            if len(workers) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None and len(workers) >= 2, f"no workers seen: {(tmp_path / 'log').read_text()[-2000:]}"
        lock = (out / ".lock").resolve()
        run_pids = _descendants(proc.pid)
        assert all(_holds(p, lock) for p in workers), "the workers must hold the run's folder lock"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in run_pids):
            time.sleep(0.05)
        assert not [p for p in run_pids if _alive(p)], "processes of the killed run are still alive"
        with open(lock, "a") as f:  # and now the lock is free
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workers:  # only this test's own processes, by pid
            if _alive(p):
                os.kill(p, signal.SIGKILL)
