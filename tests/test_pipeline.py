"""fairseq-ext-labels: the whole chain, reruns that skip, partial redo, parallel == serial, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from simple_kmeans import pipeline
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.shards import read_lengths

REPO = Path(__file__).resolve().parents[1]
K = 16


def _mtimes(out: Path):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def _run(audio: Path, out: Path, **kw):
    args = dict(nshard=2, jobs=1, n_clusters=K, valid_percent=0.25, quiet=True)
    args.update(kw)
    return pipeline.main(str(audio), str(out), **args)


@pytest.fixture(scope="module")
def first_run(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    result = _run(demo_corpus / "wav", out, phones=str(demo_corpus / "phones.tsv"), espnet=True)
    return out, result


def test_outputs_are_consistent(first_run, demo_corpus):
    out, result = first_run
    assert result["splits"] == ["train", "valid"] and result["skipped"] == []
    assert result["ran"][:2] == ["manifest", "features/train_0_2"] and result["ran"][-1] == "espnet"
    for split, n in (("train", 9), ("valid", 3)):
        man = read_manifest(out / "manifest" / f"{split}.tsv")
        assert len(man) == n
        frames = np.concatenate([read_lengths(out / "feat" / f"{split}_{r}_2.len") for r in range(2)])
        lines = (out / "labels" / f"{split}.km").read_text().splitlines()
        assert [len(line.split()) for line in lines] == frames.tolist()
        for entry, nf in zip(man.entries, frames):  # 100 Hz MFCC frames: (samples - 400) // 160 + 1
            assert nf == (entry.n_samples - 400) // 160 + 1
        labels = np.array([int(t) for line in lines for t in line.split()])
        assert 0 <= labels.min() and labels.max() < K
        for name in ("text", "wav.scp", "utt2num_samples"):  # every file of the export survives the run
            assert len((out / "espnet" / split / name).read_text().splitlines()) == n, name
    assert (out / "labels" / "dict.km.txt").read_text() == "".join(f"{i} 1\n" for i in range(K))
    assert len((out / "espnet" / "tokens.txt").read_text().splitlines()) == K + 2
    report = json.loads((out / "quality.json").read_text())
    assert report == result["report"]
    q = report["quality"]
    assert q["utt tot"] == 12 and q["utt miss"] == 0
    assert 0.3 < q["MI/H(ref)"] < 1.0 and q["ref pur"] > 0.5  # MFCC k-means finds the synthetic phones
    assert report["stats"]["K"] == K and report["stats"]["clusters used"] > K // 2
    assert "PNMI" in result["report_text"]
    assert f"task.label_dir={out / 'labels'}" in result["train_command"]


def test_rerun_skips_everything_then_redoes_only_what_is_missing(first_run, demo_corpus):
    out, first = first_run
    kw = dict(phones=str(demo_corpus / "phones.tsv"), espnet=True)
    before = _mtimes(out)
    again = _run(demo_corpus / "wav", out, **kw)
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(first["ran"])
    assert _mtimes(out) == before

    (out / "feat" / "train_1_2.npy").unlink()
    (out / "labels" / "valid.km").unlink()
    (out / ".stamps" / "labels__valid_0_2.json").unlink()  # interrupted after its output was renamed
    redo = _run(demo_corpus / "wav", out, **kw)
    assert sorted(redo["ran"]) == ["features/train_1_2", "labels/valid_0_2", "merge/valid"]
    after = _mtimes(out)
    changed = {p.relative_to(out).as_posix() for p in after if after[p] != before.get(p)}
    assert changed == {"feat/train_1_2.npy", "feat/train_1_2.len", "labels/valid_0_2.km", "labels/valid.km",
                       "labels/dict.km.txt"}
    assert _run(demo_corpus / "wav", out, **kw)["ran"] == []


def test_changed_settings_redo_what_they_affect(demo_corpus, tmp_path):
    _run(demo_corpus / "wav", tmp_path, n_clusters=8)
    res = _run(demo_corpus / "wav", tmp_path, n_clusters=12)
    assert not any(u.startswith(("manifest", "features")) for u in res["ran"])
    assert {"kmeans", "labels/train_0_2", "merge/valid", "quality"} <= set(res["ran"])
    assert len((tmp_path / "labels" / "dict.km.txt").read_text().splitlines()) == 12
    res = _run(demo_corpus / "wav", tmp_path, n_clusters=12, force=True)
    assert res["skipped"] == [] and "manifest" in res["ran"]


def test_parallel_workers_give_identical_outputs(first_run, demo_corpus, tmp_path, monkeypatch):
    out, _ = first_run
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_AUDIO_S", 0.0)
    res = _run(demo_corpus / "wav", tmp_path / "par", jobs=2, phones=str(demo_corpus / "phones.tsv"))
    assert "features/valid_1_2" in res["ran"]
    for rel in ("feat/train_0_2.npy", "feat/valid_1_2.len", "labels/train.km", "labels/valid.km"):
        assert (tmp_path / "par" / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert res["report"]["quality"] == json.loads((out / "quality.json").read_text())["quality"]


def test_new_audio_file_updates_manifest(demo_corpus, tmp_path):
    audio = tmp_path / "audio"
    subprocess.run(["cp", "-a", str(demo_corpus / "wav"), str(audio)], check=True)
    _run(audio, tmp_path / "out", valid_percent=0.0, n_clusters=8)
    wav, sr = sf.read(str(next(audio.rglob("*.wav"))))
    sf.write(audio / "extra.wav", wav, sr)
    res = _run(audio, tmp_path / "out", valid_percent=0.0, n_clusters=8)
    assert "manifest" in res["ran"] and len(read_manifest(tmp_path / "out" / "manifest" / "train.tsv")) == 13


def test_tsv_dir_mode_and_errors(first_run, demo_corpus, tmp_path):
    out, _ = first_run
    res = pipeline.main(str(tmp_path / "o"), tsv_dir=str(out / "manifest"), nshard=3, jobs=1, n_clusters=8,
                        quiet=True)
    assert res["splits"] == ["train", "valid"] and "manifest" not in res["ran"]
    assert (tmp_path / "o" / "labels" / "train.km").exists()
    with pytest.raises(UserError, match="needs --ckpt"):
        pipeline.main(str(demo_corpus / "wav"), str(tmp_path / "h"), feature="hubert")
    with pytest.raises(UserError, match="usage"):
        pipeline.main(str(demo_corpus / "wav"))


def test_cli_demo_prints_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.pipeline", "--demo", str(tmp_path / "demo"),
                           "--n-clusters", "24", "--nshard", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PNMI (MI/H(ref))" in proc.stdout and "fairseq-hydra-train" in proc.stdout
    report = json.loads((tmp_path / "demo" / "quality.json").read_text())
    assert report["quality"]["utt tot"] == 48 and report["quality"]["MI/H(ref)"] > 0.3
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.pipeline", "--demo", str(tmp_path / "demo"),
                           "--n-clusters", "24", "--nshard", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "skipping features: all 4 units already done" in proc.stderr


def test_cli_bad_audio_exit_2(tmp_path):
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "stereo.wav", np.zeros((1600, 2), np.float32), 16000)
    sf.write(tmp_path / "a" / "ok.wav", np.zeros(1600, np.float32), 16000)
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.pipeline", str(tmp_path / "a"), str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "stereo.wav: 2 channels" in proc.stderr and "Traceback" not in proc.stderr


def test_hubert_features_give_50hz_labels(demo_corpus, tmp_path):
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    ckpt = make_tiny_hubert_checkpoint(tmp_path / "hubert.pt")
    res = _run(demo_corpus / "wav", tmp_path / "out", feature="hubert", ckpt=str(ckpt), layer=1, n_clusters=8,
               phones=str(demo_corpus / "phones.tsv"))
    man = read_manifest(tmp_path / "out" / "manifest" / "train.tsv")
    lines = (tmp_path / "out" / "labels" / "train.km").read_text().splitlines()
    for entry, line in zip(man.entries, lines):  # CNN stride 320: 50 labels a second
        assert abs(len(line.split()) - entry.n_samples / 320) <= 2
    q = res["report"]["quality"]  # labels upsampled x2 against the 100 Hz phones
    assert q["frm diff"] <= 4 * q["utt tot"] and "model.label_rate=50" in res["train_command"]
    os.utime(ckpt, ns=(1, 1))  # another checkpoint (same path): features and everything after are redone
    res = _run(demo_corpus / "wav", tmp_path / "out", feature="hubert", ckpt=str(ckpt), layer=1, n_clusters=8)
    assert "manifest" not in res["ran"] and "features/train_0_2" in res["ran"] and "kmeans" in res["ran"]


def test_second_run_on_same_folder_is_refused(tmp_path):
    import fcntl

    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running pipeline holds it
        with pytest.raises(UserError, match="another process is running fairseq-ext-labels"):
            pipeline.main(demo=str(tmp_path / "out"), quiet=True)


def test_failing_worker_names_unit_and_keeps_finished_shards(demo_corpus, tmp_path, monkeypatch):
    from tests.conftest import write_manifest

    monkeypatch.setattr(pipeline, "PARALLEL_MIN_AUDIO_S", 0.0)
    tsv = write_manifest(demo_corpus / "wav", tmp_path / "m" / "train.tsv")
    lines = tsv.read_text().splitlines()
    rel, n = lines[-1].split("\t")
    lines[-1] = f"{rel}\t{int(n) + 7}"  # last utterance (shard 1 of 2) has the wrong length
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"features/train_1_2: .*manifest says"):
        pipeline.main(str(tmp_path / "out"), tsv_dir=str(tmp_path / "m"), nshard=2, jobs=2, quiet=True)
    stamps = sorted(p.name for p in (tmp_path / "out" / ".stamps").iterdir())
    assert stamps == ["features__train_0_2.json"]


def test_unit_signature_names_the_function_as_before():
    """Units carry function objects; their stamp signature names the function ``module:qualname``, so
    stamps written when units were named by ``"module:function"`` strings keep matching."""
    from fairseq_ext.base.steps import Unit, digest, func_name
    from simple_kmeans import learn_kmeans

    kwargs, inputs = {"feat_dir": "/f", "split": "train"}, {"features": "abc"}
    unit = Unit("kmeans", learn_kmeans.main, kwargs, [], inputs)
    assert func_name(learn_kmeans.main) == "simple_kmeans.learn_kmeans:main"
    assert unit.signature == digest({"func": "simple_kmeans.learn_kmeans:main", "kwargs": kwargs, "inputs": inputs})
    assert Unit("kmeans", learn_kmeans.main, {**kwargs, "split": "valid"}, [], inputs).signature != unit.signature
