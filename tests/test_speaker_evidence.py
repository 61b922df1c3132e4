"""The evidence drivers of issue 5: the keyword corpus generator, the A-D front-end sweep and the
speaker experiment (simple vs boss vs frozen-HuBERT heads), at toy size with the real trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


TOY = dict(keywords=3, voices=5, takes=2, valid_voices=1, test_voices=1)


def test_kws_corpus_is_deterministic_and_loads_as_folder_tree(tmp_path):
    import soundfile as sf

    from fairseq_ext.tasks.speaker_classification import SpeakerClassificationConfig, SpeakerClassificationTask

    from simple_kmeans.recipes.kws_corpus import main as make_kws_corpus

    a = make_kws_corpus(str(tmp_path / "a"), **TOY)
    b = make_kws_corpus(str(tmp_path / "b"), **{**TOY, "voices": 6})  # one more voice: the others unchanged
    words = ["sea", "she", "fee"]
    assert sorted(d.name for d in a.iterdir() if d.is_dir()) == sorted(words)
    wavs = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    assert len(wavs) == 3 * 5 * 2
    for rel in wavs:
        x, sr = sf.read(a / rel, dtype="int16")
        assert sr == 16000 and x.shape == (16000,) and np.abs(x).max() > 1000
        assert np.array_equal(x, sf.read(b / rel, dtype="int16")[0]), rel
    # different voices and keywords really differ
    x0 = sf.read(a / "sea" / "v000_nohash_0.wav")[0]
    assert not np.allclose(x0, sf.read(a / "sea" / "v001_nohash_0.wav")[0])
    # speaker-disjoint split lists: voice 3 is validation, voice 4 test
    val = (a / "validation_list.txt").read_text().split()
    test = (a / "testing_list.txt").read_text().split()
    assert val == [f"{w}/v003_nohash_{t}.wav" for w in words for t in range(2)]
    assert test == [f"{w}/v004_nohash_{t}.wav" for w in words for t in range(2)]
    assert json.loads((a / "corpus.json").read_text())["clips"] == {"train": 18, "valid": 6, "test": 6}

    task = SpeakerClassificationTask(SpeakerClassificationConfig(data=str(a), input_type="audio"))
    assert task.labels == sorted(words) and task.layout == "folders"
    sizes = {}
    for split in ("train", "valid", "test"):
        task.load_dataset(split)
        ds = task.datasets[split]
        sizes[split] = len(ds)
        uids = {it.uid.split("/")[1].split("_")[0] for it in ds.items}
        assert uids == {"train": {"v000", "v001", "v002"}, "valid": {"v003"}, "test": {"v004"}}[split]
    assert sizes == {"train": 18, "valid": 6, "test": 6}

    # a smaller corpus written over a larger one leaves no stale clips; an identical rerun is a no-op
    make_kws_corpus(str(tmp_path / "b"), **TOY)
    assert sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.wav")) == wavs
    before = (a / "sea" / "v000_nohash_0.wav").stat().st_mtime_ns
    make_kws_corpus(str(a), **TOY)
    assert (a / "sea" / "v000_nohash_0.wav").stat().st_mtime_ns == before


def test_kws_sweep_quick(tmp_path, capsys):
    import torch

    from fairseq_ext import load_model

    from simple_kmeans.recipes import kws_sweep as sweep

    res = sweep.main(str(tmp_path), settings="A,D", n_mels="12", seeds="1", quick=True)
    assert [(r["setting"], r["n_mels"], r["seed"]) for r in res["rows"]] == [("A", 12, 1), ("D", 12, 1)]
    for r in res["rows"]:
        assert 0 <= r["test"] <= 100 and r["valid"] and r["valid"][-1][0] == 4
    out = capsys.readouterr().out
    assert "| A | - | 12 | 1 |" in out and "| D | STFT+Mel | 12 | 1 |" in out
    # the setting reached the model: D trained both bases, A none
    runs = tmp_path / "runs"
    ckpt_dirs = {p.name.split("_")[0]: p for p in runs.iterdir()}
    model_d, cfg_d, _ = load_model(str(ckpt_dirs["D"] / "checkpoints" / "checkpoint_last.pt"))
    model_a, cfg_a, _ = load_model(str(ckpt_dirs["A"] / "checkpoints" / "checkpoint_last.pt"))
    assert cfg_d.model.trainable_stft and cfg_d.model.trainable_mel and cfg_d.model.n_mels == 12
    assert not cfg_a.model.trainable_stft and not cfg_a.model.trainable_mel
    fa, fd = model_a.frontend.state_dict(), model_d.frontend.state_dict()
    changed = [k for k in fa if fa[k].shape == fd[k].shape and not torch.equal(fa[k], fd[k])]
    assert changed, "setting D trained no front-end parameter"
    # a rerun skips the finished runs
    stamp = (ckpt_dirs["A"] / "train.log").stat().st_mtime_ns
    again = sweep.main(str(tmp_path), settings="A", n_mels="12", seeds="1", quick=True)
    assert (ckpt_dirs["A"] / "train.log").stat().st_mtime_ns == stamp
    assert again["rows"][0]["test"] == res["rows"][0]["test"]


def test_speaker_experiment_quick(tmp_path, capsys):
    from simple_kmeans.recipes import speaker_experiment as exp

    res = exp.main(str(tmp_path), models="simple,boss_hubert", quick=True)
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == {"simple", "boss_hubert"}
    for r in rows.values():
        assert 0 <= r["test"] <= 100 and r["valid"][-1][0] == 4
    # the head really sat on the pre-trained HuBERT
    ckpt = res["settings"]["upstreams"]["ckpt"]
    assert Path(ckpt).is_file() and "pretrain" in ckpt
    log = (tmp_path / "runs" / "boss_hubert_u4_s1" / "train.log").read_text()
    assert f"model.ssl_checkpoint={ckpt}" in log.splitlines()[0]
    splits = {s: len((tmp_path / "data" / f"{s}.lbl").read_text().split()) for s in ("train", "valid", "test")}
    assert splits == {"train": 24, "valid": 4, "test": 4}  # 4 speakers x (6 / 1 / 1)
    out = capsys.readouterr().out
    assert "| simple | log-Mel | 1 |" in out and "| boss_hubert | frozen HuBERT (pre-trained) | 1 |" in out


@pytest.mark.parametrize("argv", [["--settings", "E"], ["--n-mels", "x"]])
def test_kws_sweep_bad_arguments(tmp_path, argv):
    """The command line refuses bad settings with status 2 and a message, before any work."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "kws_sweep.py"), str(tmp_path / "out"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and argv[0] in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
