"""Bad input is named, never silently used (issue 13, items 3, 4, 5, 7 and the manifest part of the
smaller class): non-finite or far out-of-range audio, folder loops, manifests without a root line
or in another encoding, stray columns, blank or duplicate lines, unlistable file names, other audio
types, repeated utterance ids in the quality report."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_ext.base.atomic import NpyStreamWriter
from fairseq_ext.base.bad_audio import BadAudio
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_audio, read_manifest
from simple_kmeans import manifest, measure_quality

REPO = Path(__file__).resolve().parents[1]


def _wav(path: Path, n: int = 1600, seed: int = 0, subtype: str = "PCM_16", values=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.3, 0.3, n).astype(np.float32)
    if values is not None:
        x[: len(values)] = values
    sf.write(path, x, 16000, subtype=subtype)
    return path


def _rels(tsv: Path):
    return [e.relpath for e in read_manifest(tsv).entries]


# --------------------------------------------------------------------------- item 3: NaN/Inf and out-of-range audio


@pytest.fixture
def nan_corpus(tmp_path) -> Path:
    root = tmp_path / "audio"
    _wav(root / "good.wav")
    _wav(root / "nan.wav", subtype="FLOAT", values=[0.1, np.nan])
    _wav(root / "inf.wav", subtype="FLOAT", values=[np.inf])
    _wav(root / "loud.wav", subtype="FLOAT", values=[7.5])
    return root


def test_manifest_step_names_non_finite_files_and_skips_them(nan_corpus, tmp_path, caplog):
    with pytest.raises(UserError) as err:
        manifest.main(str(nan_corpus), str(tmp_path / "m"), valid_percent=0)
    msg = str(err.value)
    assert "2 of 4" in msg and "nan.wav: 1 non-finite samples" in msg and "inf.wav: 1 non-finite" in msg
    caplog.set_level(logging.WARNING)
    out = manifest.main(str(nan_corpus), str(tmp_path / "m"), valid_percent=0, skip_bad=True)
    assert _rels(out["train"]) == ["good.wav", "loud.wav"]
    assert out["n_bad"] == 2 and out["n_loud"] == 1
    loud = [r.getMessage() for r in caplog.records if "far outside [-1, 1]" in r.getMessage()]
    assert len(loud) == 1 and "loud.wav: peak 7.5" in loud[0]


def test_read_audio_refuses_non_finite_and_bad_audio_skips(nan_corpus, tmp_path, caplog):
    with pytest.raises(UserError, match=r"x.tsv:3: .*nan.wav has 1 non-finite samples .*first at sample 1"):
        read_audio(str(nan_corpus / "nan.wav"), 16000, 1600, where="x.tsv:3")
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{nan_corpus}\n" + "".join(f"{n}.wav\t1600\n" for n in ("good", "nan", "loud", "inf")))
    m = read_manifest(tsv)
    strict = BadAudio(False, tmp_path / "r.skipped.tsv")
    with pytest.raises(UserError, match=r"train.tsv:3: .*nan.wav has 1 non-finite .*--skip-bad"):
        strict.read(m, m.entries[1], 16000)
    caplog.set_level(logging.WARNING)
    bad = BadAudio(True, tmp_path / "r.skipped.tsv")
    wavs = [bad.read(m, e, 16000) for e in m.entries]
    assert [w is None for w in wavs] == [False, True, False, True]
    assert wavs[2][0] == 7.5  # out-of-range audio is used as it is, with one warning
    assert [e.relpath for e, _ in bad.skipped] == ["nan.wav", "inf.wav"]
    assert [e.relpath for e in bad.out_of_range] == ["loud.wav"]
    bad.write_report()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("loud.wav has samples far outside [-1, 1] (peak 7.5)" in s for s in messages) == 1
    assert any("1 audio file(s) of this shard have samples far outside" in s for s in messages)
    rows = (tmp_path / "r.skipped.tsv").read_text().splitlines()
    assert [r.split("\t")[1] for r in rows[1:]] == ["nan.wav", "inf.wav"]


def test_feature_dump_names_the_nan_file_and_skip_bad_skips_it(nan_corpus, tmp_path):
    """Through the MFCC dumper: the NaN file is named (no NaN features, no label); --skip-bad leaves it out."""
    from simple_kmeans import dump_mfcc_feature

    tsv = tmp_path / "tsv"
    tsv.mkdir()
    (tsv / "train.tsv").write_text(f"{nan_corpus}\ngood.wav\t1600\nnan.wav\t1600\nloud.wav\t1600\n")
    with pytest.raises(UserError, match=r"train.tsv:3: .*nan.wav has 1 non-finite samples"):
        dump_mfcc_feature.main(str(tsv), "train", 1, 0, str(tmp_path / "feat"))
    assert not (tmp_path / "feat" / "train_0_1.len").exists()
    npy, lens = dump_mfcc_feature.main(str(tsv), "train", 1, 0, str(tmp_path / "feat"), skip_bad=True)
    feats = np.load(npy)
    assert len(lens.read_text().split()) == 2 and np.isfinite(feats).all()


def test_npy_writer_refuses_non_finite_features(tmp_path):
    path = tmp_path / "train_0_1.npy"
    with pytest.raises(UserError, match=r"train_0_1.npy: the features of utterance 2 of this file \(rows 3..4\) "
                                        r"have 1 non-finite"):
        with NpyStreamWriter(path, dim=2) as w:
            w.append(np.ones((3, 2)))
            w.append(np.array([[1.0, np.nan], [0.0, 0.0]]))
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing written, no temp file left
    with pytest.raises(UserError, match=r"the features of train.tsv:7 \(a.wav\) have 2 non-finite"):
        with NpyStreamWriter(path, dim=1) as w:
            w.append(np.array([[np.inf], [1e39]]), what="train.tsv:7 (a.wav)")  # 1e39 overflows float32
    with NpyStreamWriter(path, dim=2) as w:
        w.append(np.ones((3, 2)))
    assert np.load(path).shape == (3, 2)


# --------------------------------------------------------------------------- item 4: folder loops


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_directory_loop_and_file_links_list_each_file_once(tmp_path, caplog):
    root = tmp_path / "audio"
    _wav(root / "a" / "x.wav", seed=1)
    _wav(root / "b" / "y.wav", seed=2)
    outside = _wav(tmp_path / "elsewhere" / "z.wav", seed=3)
    os.symlink(".", root / "sub")  # loop: the root inside itself
    os.symlink("..", root / "a" / "up")  # loop: a parent
    os.symlink(root / "b", root / "0link_to_b")  # sorts before b: b is still listed by its real path
    os.symlink(outside.parent, root / "ext")  # a folder outside the root is followed once
    os.symlink("x.wav", root / "a" / "again.wav")  # a file linked twice
    caplog.set_level(logging.WARNING)
    out = manifest.main(str(root), str(tmp_path / "m"), valid_percent=0)
    assert _rels(out["train"]) == ["a/x.wav", "b/y.wav", "ext/z.wav"]
    assert out["n_duplicates"] == 1 and out["n_bad"] == 0
    text = caplog.text
    assert "a/again.wav: same file as a/x.wav" in text
    assert "not following 3 directory link(s)" in text and "sub" in text and "0link_to_b" in text


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_self_link_and_broken_link_are_named_not_a_traceback(tmp_path):
    root = tmp_path / "audio"
    _wav(root / "ok.wav")
    os.symlink("self.wav", root / "self.wav")
    os.symlink("gone.wav", root / "broken.wav")
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.manifest", str(root), "--dest", str(tmp_path / "m"),
                           "--valid-percent", "0"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "self.wav: symbolic link loop" in proc.stderr and "broken.wav: broken symbolic link to gone.wav" in proc.stderr
    out = manifest.main(str(root), str(tmp_path / "m"), valid_percent=0, skip_bad=True)
    assert _rels(out["train"]) == ["ok.wav"] and out["n_bad"] == 2


# --------------------------------------------------------------------------- manifest step: names, types, rates


def test_unlistable_file_names_are_refused_and_escaped(tmp_path):
    root = tmp_path / "audio"
    _wav(root / "ok.wav")
    _wav(root / "tab\there.wav")
    _wav(root / "line\nbreak.wav")
    latin1 = _wav(root / "caf\u00e9.wav")
    os.rename(latin1, os.fsencode(root) + b"/caf\xe9.wav")  # a Latin-1 name: not UTF-8
    with pytest.raises(UserError) as err:
        manifest.main(str(root), str(tmp_path / "m"), valid_percent=0)
    msg = str(err.value)
    assert "3 of 4" in msg and "tab\\there.wav: the file name contains a tab or line break" in msg
    assert "caf\\udce9.wav: the file name is not valid UTF-8" in msg
    rows = (tmp_path / "m" / "bad_files.tsv").read_text().splitlines()
    assert len(rows) == 4 and all(r.count("\t") == 1 for r in rows)
    assert rows[1].startswith("caf\\udce9.wav\t") and rows[2].startswith("line\\nbreak.wav\t")
    out = manifest.main(str(root), str(tmp_path / "m"), valid_percent=0, skip_bad=True)
    assert _rels(out["train"]) == ["ok.wav"]
    assert len(read_manifest(out["train"])) == 1


def test_other_audio_types_are_counted(tmp_path, caplog):
    root = tmp_path / "audio"
    _wav(root / "a.wav")
    for name in ("b.ogg", "c.OGG", "d.mp3"):
        (root / name).write_bytes(b"not decoded")
    (root / "notes.txt").write_text("not audio")
    caplog.set_level(logging.WARNING)
    out = manifest.main(str(root), str(tmp_path / "m"), ext="wav,flac", valid_percent=0)
    assert _rels(out["train"]) == ["a.wav"]
    assert "left out 3 audio file(s) of other types (1 .mp3, 2 .ogg)" in caplog.text
    assert "--ext wav,flac,mp3,ogg" in caplog.text


def test_sample_rate_must_not_be_negative(tmp_path):
    _wav(tmp_path / "audio" / "a.wav")
    with pytest.raises(UserError, match="--sample-rate must be a rate in Hz"):
        manifest.main(str(tmp_path / "audio"), str(tmp_path / "m"), sample_rate=-1)


def test_pipeline_refuses_a_zero_sample_rate(tmp_path):
    _wav(tmp_path / "audio" / "a.wav")
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.pipeline", str(tmp_path / "audio"), str(tmp_path / "o"),
                           "--sample-rate", "0"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sample-rate must be the audio's rate in Hz" in proc.stderr


# --------------------------------------------------------------------------- item 5 and the manifest reader


def _tsv(tmp_path: Path, content, name: str = "train.tsv") -> Path:
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.mark.parametrize("content, expect", [
    ("/data/a.wav\t1600\n/data/b.wav\t1600\n", r"train.tsv:1: '/data/a.wav\\t1600' looks like a file entry, "
                                               r"not the audio root: line 1 must be the audio root folder alone"),
    ("/root\ta\nb.wav\t3\n", r"train.tsv:1: .* looks like not a folder name"),
    ("/root\na.wav\t3\n\nb.wav\t4\n", r"train.tsv:3: blank line: remove it"),
    ("/root\na.wav\t3\n", None),
    ("/root\na.wav\t3\tspk1\n", r"train.tsv:2: expected 2 tab-separated columns .* got 3: .*remove the extra"),
    ("/root\na.wav 3\n", r"train.tsv:2: expected 2 tab-separated columns"),
    ("/root\na.wav\t3\nb.wav\t4\na.wav\t3\n", r"train.tsv:4: a.wav is listed twice \(also line 2\)"),
    ("/root\na.wav\t0\n", r"train.tsv:2: n_samples is 0"),
    ("/root\na.wav\tx\n", r"train.tsv:2: n_samples 'x' is not an integer"),
    ("\ufeff/root\na.wav\t3\n", r"train.tsv:1: the manifest is saved as UTF-8 with a byte-order mark; save it as "
                                r"plain UTF-8"),
    ("/root\na.wav\t3\r\nb.wav\t4\r\n", None),  # Windows line ends are fine (fairseq strips them too)
])
def test_manifest_reader_refuses_malformed_lines(tmp_path, content, expect):
    path = _tsv(tmp_path, content)
    if expect is None:
        assert read_manifest(path).entries[0].relpath == "a.wav"
        return
    with pytest.raises(UserError, match=expect):
        read_manifest(path)


def test_manifest_reader_refuses_other_encodings(tmp_path):
    with pytest.raises(UserError, match=r"train.tsv:1: the manifest is saved as UTF-16"):
        read_manifest(_tsv(tmp_path, "/root\na.wav\t3\n".encode("utf-16")))
    with pytest.raises(UserError, match=r"train.tsv:3: byte 0xe9 is not valid UTF-8: save the manifest as UTF-8"):
        read_manifest(_tsv(tmp_path, "/root\na.wav\t3\ncaf\u00e9.wav\t4\n".encode("latin-1")))


def test_manifest_without_root_line_fails_in_the_cli(tmp_path):
    """Item 5 end to end: the merge step no longer loses line 1's file; it stops with a sentence."""
    tsv = _tsv(tmp_path, f"{tmp_path}/a.wav\t1600\n{tmp_path}/b.wav\t1600\n")
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.measure_quality", str(tmp_path), str(tmp_path), "km",
                           "--lab_sets", "train"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tsv}:1:" in proc.stderr and "line 1 must be the audio root folder" in proc.stderr


# --------------------------------------------------------------------------- item 7: repeated basenames


def _repeated_basenames(tmp_path: Path) -> Path:
    """6 utterances, 3 basenames (a/x, b/x, ...), labels and phone references keyed by basename."""
    rels = [f"{d}/{u}.wav" for u in ("x", "y", "z") for d in ("a", "b")]
    _tsv(tmp_path, "/root\n" + "".join(f"{r}\t1600\n" for r in rels), "valid.tsv")
    (tmp_path / "valid.km").write_text("".join(f"{i} {i} {i + 1}\n" for i in range(6)))
    (tmp_path / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(8)))
    (tmp_path / "phn").mkdir()
    (tmp_path / "phn" / "dev.tsv").write_text("".join(f"{u}\tA,A,B\n" for u in ("x", "y", "z")))
    return tmp_path


def test_quality_report_refuses_repeated_basenames(tmp_path):
    d = _repeated_basenames(tmp_path)
    with pytest.raises(UserError, match=r"valid.tsv:3: utterance id 'x' is used twice \(also line 2\); utterances "
                                        r"are matched by file basename"):
        measure_quality.main(str(d), str(d), "km", phn_dir=str(d / "phn"), phn_sets=["dev"], quiet=True)
    # without references the statistics need no ids: every label line counts
    stats = measure_quality.main(str(d), str(d), "km", quiet=True)["stats"]
    assert stats["utterances"] == 6 and stats["frames"] == 18


def test_quality_report_refuses_ids_repeated_across_label_sets(tmp_path):
    for split in ("train", "valid"):
        _tsv(tmp_path, f"/root\n{split}/u.wav\t1600\n", f"{split}.tsv")
        (tmp_path / f"{split}.km").write_text("0 1\n")
    (tmp_path / "phn").mkdir()
    (tmp_path / "phn" / "dev.tsv").write_text("u\tA,B\n")
    with pytest.raises(UserError, match=r"valid.tsv: utterance id 'u' \(and 0 more\) is also in an earlier label set"):
        measure_quality.main(str(tmp_path), str(tmp_path), "km", lab_sets=["train", "valid"],
                             phn_dir=str(tmp_path / "phn"), phn_sets=["dev"], quiet=True)
