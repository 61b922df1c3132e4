"""Speaker labels (speaker_labels.py): {split}.spk and dict.spk.txt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simple_kmeans import speaker_labels as sl
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.speakers import read_speaker_table
from tests.conftest import write_manifest

REPO = Path(__file__).resolve().parents[1]


def _truth(demo_corpus, manifest_dir):
    table = dict(line.split("\t") for line in (demo_corpus / "speakers.tsv").read_text().splitlines())
    manifest = read_manifest(manifest_dir / "train.tsv")
    return [table[manifest.uid(e)] for e in manifest.entries]


def test_from_path_and_from_table_agree(demo_corpus, demo_manifest, tmp_path):
    truth = _truth(demo_corpus, demo_manifest)
    out = sl.main(str(demo_manifest), "train", str(tmp_path / "a"), from_path="parent")
    assert out == tmp_path / "a" / "train.spk"
    assert out.read_text().splitlines() == truth
    sl.main(str(demo_manifest), "train", str(tmp_path / "b"), table=str(demo_corpus / "speakers.tsv"))
    assert (tmp_path / "b" / "train.spk").read_text() == out.read_text()
    # dict: "name count" sorted by name
    assert (tmp_path / "a" / "dict.spk.txt").read_text() == "spk00 4\nspk01 4\nspk02 4\n"
    assert sl.read_spk_dict(tmp_path / "a") == {"spk00": 0, "spk01": 1, "spk02": 2}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["dict.spk.txt", "train.spk"]


def test_from_path_regex_and_grandparent(demo_corpus, demo_manifest, tmp_path):
    truth = _truth(demo_corpus, demo_manifest)
    sl.main(str(demo_manifest), "train", str(tmp_path / "r1"), from_path=r"(?P<spk>spk\d+)_\d+\.wav$")
    assert (tmp_path / "r1" / "train.spk").read_text().splitlines() == truth
    sl.main(str(demo_manifest), "train", str(tmp_path / "r2"), from_path=r"^([^/]+)/")
    assert (tmp_path / "r2" / "train.spk").read_text().splitlines() == truth
    assert sl.speaker_from_path("103/1240/103-1240-0000.flac", "grandparent") == "103"
    assert sl.speaker_from_path("103/1240/103-1240-0000.flac", "parent") == "1240"
    assert sl.speaker_from_path("103/1240/103-1240-0000.flac", r"[0-9]+(?=-)") == "103"
    with pytest.raises(UserError, match="no grandparent folder"):
        sl.speaker_from_path("spk00/x.wav", "grandparent", "train.tsv:2")
    with pytest.raises(UserError, match=r"train\.tsv:\d+: --from-path .* does not match"):
        sl.main(str(demo_manifest), "train", str(tmp_path / "r3"), from_path=r"^nomatch")
    with pytest.raises(UserError, match="regular expression"):
        sl.main(str(demo_manifest), "train", str(tmp_path / "r4"), from_path="(")


def test_valid_split_with_dict(demo_corpus, demo_manifest, tmp_path):
    sl.main(str(demo_manifest), "train", str(tmp_path / "lab"), from_path="parent")
    # a validation split of two speakers, labelled against the training dictionary
    files = sorted((demo_corpus / "wav").rglob("spk0[12]_00[01].wav"))
    write_manifest(demo_corpus / "wav", tmp_path / "m" / "valid.tsv", files)
    sl.main(str(tmp_path / "m"), "valid", str(tmp_path / "lab"), from_path="parent",
            dict=str(tmp_path / "lab" / "dict.spk.txt"))
    assert (tmp_path / "lab" / "valid.spk").read_text() == "spk01\nspk01\nspk02\nspk02\n"
    assert (tmp_path / "lab" / "dict.spk.txt").read_text() == "spk00 4\nspk01 4\nspk02 4\n"  # untouched
    # another lab_dir gets a copy of the dictionary
    sl.main(str(tmp_path / "m"), "valid", str(tmp_path / "lab2"), from_path="parent", dict=str(tmp_path / "lab"))
    assert (tmp_path / "lab2" / "dict.spk.txt").read_text() == (tmp_path / "lab" / "dict.spk.txt").read_text()


def test_unknown_speaker_in_valid_is_an_error(demo_corpus, demo_manifest, tmp_path):
    sl.main(str(demo_manifest), "train", str(tmp_path / "lab"), from_path="parent")
    wav = tmp_path / "audio" / "spk09" / "spk09_000.wav"
    wav.parent.mkdir(parents=True)
    wav.write_bytes((demo_corpus / "wav" / "spk00" / "spk00_000.wav").read_bytes())
    write_manifest(tmp_path / "audio", tmp_path / "m" / "valid.tsv")
    with pytest.raises(UserError, match=r"valid\.tsv:2: utterance spk09_000 has speaker spk09, which is not in"):
        sl.main(str(tmp_path / "m"), "valid", str(tmp_path / "lab"), from_path="parent", dict=str(tmp_path / "lab"))
    assert not (tmp_path / "lab" / "valid.spk").exists()


def test_missing_speaker_in_table_is_an_error(demo_corpus, demo_manifest, tmp_path):
    lines = (demo_corpus / "speakers.tsv").read_text().splitlines()
    table = tmp_path / "uid2spk.tsv"
    table.write_text("\n".join(line for line in lines if not line.startswith("spk01_002")) + "\n")
    manifest = read_manifest(demo_manifest / "train.tsv")
    line = next(e.line for e in manifest.entries if manifest.uid(e) == "spk01_002")
    with pytest.raises(UserError, match=rf"train\.tsv:{line}: utterance spk01_002 .* has no speaker"):
        sl.main(str(demo_manifest), "train", str(tmp_path / "lab"), table=str(table))
    assert not (tmp_path / "lab" / "train.spk").exists()


def test_table_and_dict_errors(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("u1\ta\nu1\tb\n")
    with pytest.raises(UserError, match=r"t\.tsv:2: utterance u1 is listed with two speakers"):
        read_speaker_table(table)
    table.write_text("u1\ta b\n")
    with pytest.raises(UserError, match=r"t\.tsv:1: expected"):
        read_speaker_table(table)
    d = tmp_path / "dict.spk.txt"
    d.write_text("a 1\na 2\n")
    with pytest.raises(UserError, match="listed twice"):
        sl.read_spk_dict(d)
    with pytest.raises(UserError, match="does not exist"):
        sl.read_spk_dict(tmp_path / "nowhere")
    with pytest.raises(UserError, match="exactly one"):
        sl.main(str(tmp_path), "train", str(tmp_path), table="x", from_path="parent")


def test_cli(demo_corpus, demo_manifest, tmp_path):
    out = subprocess.run([sys.executable, "-m", "simple_kmeans.speaker_labels", "--help"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "Usage:" in out.stdout
    ok = subprocess.run([sys.executable, "-m", "simple_kmeans.speaker_labels", str(demo_manifest), "train",
                         str(tmp_path), "--table", str(demo_corpus / "speakers.tsv")],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert len((tmp_path / "train.spk").read_text().splitlines()) == 12
    both = subprocess.run([sys.executable, "-m", "simple_kmeans.speaker_labels", str(demo_manifest), "train",
                           str(tmp_path), "--table", "x", "--from-path", "parent"],
                          capture_output=True, text=True, cwd=REPO)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    bad = subprocess.run([sys.executable, "-m", "simple_kmeans.speaker_labels", str(demo_manifest), "train",
                          str(tmp_path / "x"), "--from-path", "parent", "--dict", str(tmp_path / "missing.txt")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "missing.txt does not exist" in bad.stderr
