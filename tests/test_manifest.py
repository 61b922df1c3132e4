"""fairseq-ext-manifest: sorted deterministic manifests, seeded valid split, bad-file reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from simple_kmeans import manifest
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def _wav(path: Path, n: int = 1600, sr: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.3, 0.3, (n, channels)).astype(np.float32)
    sf.write(path, x if channels > 1 else x[:, 0], sr, subtype="PCM_16")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "audio"
    for i, name in enumerate(["b/utt2.wav", "a/utt1.flac", "a/utt0.wav", "c/d/utt3.WAV", "utt4.wav",
                              "a/utt5.wav", "b/utt6.wav", "b/utt7.wav", "b/utt8.wav", "b/utt9.wav"]):
        _wav(root / name, n=800 + 100 * i, seed=i)
    (root / "notes.txt").write_text("not audio")
    (root / "a" / ".hidden.wav").write_bytes(b"partial")  # temp files of atomic writers are ignored
    return root


def _lines(path: Path):
    return path.read_text().splitlines()


def test_sorted_lengths_and_root(corpus, tmp_path):
    out = manifest.main(str(corpus), str(tmp_path / "m"), valid_percent=0.0)
    m = read_manifest(out["train"])
    assert m.root == str(corpus.resolve())
    rels = [e.relpath for e in m.entries]
    assert rels == sorted(rels) and len(rels) == 10
    assert "c/d/utt3.WAV" in rels and "a/utt1.flac" in rels
    for e in m.entries:
        assert e.n_samples == sf.info(str(corpus / e.relpath)).frames
    assert out["valid"] is None and not (tmp_path / "m" / "valid.tsv").exists()


def test_valid_split_seeded_and_deterministic(corpus, tmp_path):
    a = manifest.main(str(corpus), str(tmp_path / "a"), valid_percent=0.3, seed=1)
    b = manifest.main(str(corpus), str(tmp_path / "b"), valid_percent=0.3, seed=1)
    c = manifest.main(str(corpus), str(tmp_path / "c"), valid_percent=0.3, seed=2)
    assert a["n_valid"] == 3 and a["n_train"] == 7
    for split in ("train", "valid"):
        assert _lines(a[split]) == _lines(b[split])
        rows = _lines(a[split])[1:]
        assert rows == sorted(rows)
    assert set(_lines(a["valid"])[1:]) != set(_lines(c["valid"])[1:])
    assert set(_lines(a["train"])[1:]).isdisjoint(_lines(a["valid"])[1:])
    assert len(set(_lines(a["train"])[1:]) | set(_lines(a["valid"])[1:])) == 10
    # a rerun overwrites, never appends
    manifest.main(str(corpus), str(tmp_path / "a"), valid_percent=0.3, seed=1)
    assert _lines(a["train"]) == _lines(b["train"])


def test_tiny_valid_percent_gives_one_file(corpus, tmp_path):
    out = manifest.main(str(corpus), str(tmp_path / "m"), valid_percent=0.01)
    assert out["n_valid"] == 1 and out["n_train"] == 9


def test_extension_filter_and_min_samples(corpus, tmp_path):
    out = manifest.main(str(corpus), str(tmp_path / "m"), ext="flac", valid_percent=0)
    assert [e.relpath for e in read_manifest(out["train"]).entries] == ["a/utt1.flac"]
    out = manifest.main(str(corpus), str(tmp_path / "n"), valid_percent=0, min_samples=1500)
    assert out["n_short"] == 7 and out["n_train"] == 3


@pytest.fixture
def bad_corpus(corpus) -> Path:
    _wav(corpus / "bad" / "stereo.wav", channels=2)
    _wav(corpus / "bad" / "rate8k.wav", sr=8000)
    (corpus / "bad" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage")
    return corpus


def test_bad_files_are_fatal_and_all_listed(bad_corpus, tmp_path):
    with pytest.raises(UserError) as err:
        manifest.main(str(bad_corpus), str(tmp_path / "m"), valid_percent=0)
    msg = str(err.value)
    assert "3 of 13" in msg
    for name, why in (("stereo.wav", "2 channels"), ("rate8k.wav", "8000 Hz"), ("broken.wav", "unreadable")):
        assert name in msg and why in msg
    assert not (tmp_path / "m" / "train.tsv").exists()
    listing = _lines(tmp_path / "m" / "bad_files.tsv")
    assert len(listing) == 4 and listing[0] == "path\tproblem"


def test_skip_bad_leaves_them_out(bad_corpus, tmp_path):
    out = manifest.main(str(bad_corpus), str(tmp_path / "m"), valid_percent=0, skip_bad=True)
    rels = [e.relpath for e in read_manifest(out["train"]).entries]
    assert out["n_bad"] == 3 and len(rels) == 10 and not any(r.startswith("bad/") for r in rels)
    assert (tmp_path / "m" / "bad_files.tsv").exists()


def test_cli_exit_code_2_and_messages(bad_corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expect in (([str(empty)], "no audio files"), ([str(bad_corpus)], "stereo.wav"),
                         ([str(tmp_path / "missing")], "is not a folder")):
        proc = subprocess.run([sys.executable, "-m", "simple_kmeans.manifest", *args, "--dest", str(tmp_path / "m")],
                              cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert expect in proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_writes_manifest(corpus, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "simple_kmeans" / "manifest.py"), str(corpus),
                           "--dest", str(tmp_path / "m"), "--valid-percent", "0.2", "--ext", "wav"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert len(_lines(tmp_path / "m" / "train.tsv")) + len(_lines(tmp_path / "m" / "valid.tsv")) == 2 + 9
