"""TIMIT reader and fairseq-ext-timit-prep on a generated mini-TIMIT (SPHERE and RIFF audio, .PHN files
written here): layout, standard splits, 61 -> 39 folding, SPHERE -> RIFF conversion, errors naming file:line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_audio, read_manifest
from fairseq_ext.data import timit_prep
from fairseq_ext.data.phone_transcripts import (
    encode_phones, load_phone_dictionary, read_phone_transcripts, transcripts_for_manifest)
from fairseq_ext.data.sphere import is_sphere, read_sphere, read_sphere_header
from fairseq_ext.data.timit import (
    CORE_TEST_SPEAKERS, DEV_SPEAKERS, FOLD_61_TO_39, PHONES_39, PhoneSegment, fold_phones, read_phn, timit_splits)

REPO = Path(__file__).resolve().parents[1]
SEG = 160  # samples per generated phone segment
# 61-label sequences and their 39-phone folding (q dropped; closures, pauses, h# -> sil).
LABELS = "h# q bcl b ao ax-h tcl t ix zh pau nx axr hv el h#".split()
FOLDED = "sil sil b aa ah sil t ih sh sil n er hh l sil".split()
LABELS_2 = "h# dcl d ux eng em en epi gcl g kcl k pcl p h#".split()
FOLDED_2 = "sil sil d uw ng m n sil sil g sil k sil p sil".split()


def write_sphere(path: Path, samples: np.ndarray, byte_format: str = "01", coding: str = "") -> None:
    """A TIMIT-style NIST SPHERE file: 1024-byte ``NIST_1A`` header, then 16-bit PCM."""
    fields = [("database_id", "-s5", "TIMIT"), ("utterance_id", f"-s{len(path.stem)}", path.stem),
              ("channel_count", "-i", "1"), ("sample_count", "-i", str(len(samples))),
              ("sample_rate", "-i", "16000"), ("sample_n_bytes", "-i", "2"),
              ("sample_byte_format", "-s2", byte_format), ("sample_sig_bits", "-i", "16")]
    if coding:
        fields.append(("sample_coding", f"-s{len(coding)}", coding))
    head = "NIST_1A\n   1024\n" + "".join(f"{k} {t} {v}\n" for k, t, v in fields) + "end_head\n"
    dtype = "<i2" if byte_format == "01" else ">i2"
    path.write_bytes(head.encode("ascii").ljust(1024, b" ") + samples.astype(dtype).tobytes())


def write_utterance(folder: Path, name: str, labels, rng, riff=False, upper=True, extra_samples=37):
    """``name``.WAV (SPHERE, or RIFF) + ``name``.PHN with one ``SEG``-sample segment per label."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = (rng.standard_normal(SEG * len(labels) + extra_samples) * 2000).astype(np.int16)
    wav = folder / (f"{name}.WAV" if upper else f"{name.lower()}.wav")
    if riff:
        sf.write(str(wav), samples, 16000, subtype="PCM_16", format="WAV")
    else:
        write_sphere(wav, samples)
    phn = folder / (f"{name}.PHN" if upper else f"{name.lower()}.phn")
    phn.write_text("".join(f"{i * SEG} {(i + 1) * SEG} {p}\n" for i, p in enumerate(labels)))
    return samples


@pytest.fixture
def mini_timit(tmp_path):
    """TRAIN: 2 speakers (one in lower case, with RIFF audio); TEST: a dev speaker, a core-test speaker and
    a speaker of neither list; each says SA1, SI<n>, SX<n>."""
    rng = np.random.default_rng(0)
    root = tmp_path / "TIMIT"
    audio = {}
    for part, dr, spk, kw in (("TRAIN", "DR1", "FCJF0", {}), ("TRAIN", "dr2", "mxyz1", {"riff": True, "upper": False}),
                              ("TEST", "DR1", "FAKS0", {}), ("TEST", "DR1", "MDAB0", {}), ("TEST", "DR2", "MABC0", {})):
        folder = root / part / dr / spk
        for sent, labels in (("SA1", LABELS), ("SI10", LABELS_2), ("SX20", LABELS[::-1])):
            audio[f"{spk.lower()}_{sent.lower()}"] = write_utterance(folder, sent, labels, rng, **kw)
    return root, audio


def test_folding_table_is_the_standard_one():
    assert len(FOLD_61_TO_39) == 61 and len(PHONES_39) == 39
    assert FOLD_61_TO_39["q"] is None and "sil" in PHONES_39 and "q" not in PHONES_39
    for p in ("bcl", "dcl", "gcl", "pcl", "tcl", "kcl", "h#", "pau", "epi"):
        assert FOLD_61_TO_39[p] == "sil"
    pairs = {"ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "el": "l", "em": "m", "en": "n", "nx": "n",
             "eng": "ng", "hv": "hh", "ix": "ih", "ux": "uw", "zh": "sh"}
    assert {p: FOLD_61_TO_39[p] for p in pairs} == pairs
    assert sum(v == k for k, v in FOLD_61_TO_39.items()) == 38  # every other label stays itself
    assert len(DEV_SPEAKERS) == len(set(DEV_SPEAKERS)) == 50
    assert len(CORE_TEST_SPEAKERS) == len(set(CORE_TEST_SPEAKERS)) == 24
    assert not set(DEV_SPEAKERS) & set(CORE_TEST_SPEAKERS)


def test_fold_phones_merges_repeats_on_request():
    segs = [PhoneSegment(i, i + 1, p, i + 1) for i, p in enumerate("h# tcl t pau q h#".split())]
    assert fold_phones(segs) == ["sil", "sil", "t", "sil", "sil"]
    assert fold_phones(segs, merge_repeats=True) == ["sil", "t", "sil"]


def test_sphere_reader_matches_soundfile_both_byte_orders(tmp_path):
    x = (np.random.default_rng(1).standard_normal(999) * 3000).astype(np.int16)
    for order in ("01", "10"):
        write_sphere(tmp_path / f"{order}.wav", x, order)
        y, sr = read_sphere(tmp_path / f"{order}.wav")
        assert sr == 16000 and y.dtype == np.int16 and np.array_equal(y, x)
        # this machine's libsndfile reads uncompressed SPHERE too; the two readers agree
        assert np.array_equal(sf.read(str(tmp_path / f"{order}.wav"), dtype="int16")[0], x)
    fields, size = read_sphere_header(tmp_path / "01.wav")
    assert size == 1024 and fields["sample_count"] == 999 and fields["database_id"] == "TIMIT"


def test_sphere_errors(tmp_path):
    x = np.zeros(100, np.int16)
    write_sphere(tmp_path / "c.wav", x, coding="pcm,embedded-shorten-v2.00")
    with pytest.raises(UserError, match="sph2pipe"):
        read_sphere(tmp_path / "c.wav")
    write_sphere(tmp_path / "t.wav", x)
    (tmp_path / "t.wav").write_bytes((tmp_path / "t.wav").read_bytes()[:-10])
    with pytest.raises(UserError, match="says 100 samples but the file holds only 95"):
        read_sphere(tmp_path / "t.wav")
    (tmp_path / "r.wav").write_bytes(b"RIFF" + bytes(100))
    assert not is_sphere(tmp_path / "r.wav")
    with pytest.raises(UserError, match="not a NIST SPHERE file"):
        read_sphere(tmp_path / "r.wav")


def test_splits_follow_the_standard_speaker_lists(mini_timit):
    root, _ = mini_timit
    splits = timit_splits(root)
    assert [u.uid for u in splits["train"]] == ["fcjf0_si10", "fcjf0_sx20", "mxyz1_si10", "mxyz1_sx20"]
    assert [u.uid for u in splits["dev"]] == ["faks0_si10", "faks0_sx20"]
    assert [u.uid for u in splits["test"]] == ["mdab0_si10", "mdab0_sx20"]
    assert splits["train"][2].dialect == "dr2" and splits["train"][2].audio.name == "si10.wav"
    with_sa = timit_splits(root, include_sa=True)
    assert [u.sentence for u in with_sa["dev"]] == ["sa1", "si10", "sx20"]
    (root / "TRAIN").rename(root / "train")
    (root / "TEST").rename(root / "test")
    assert {k: [u.uid for u in v] for k, v in timit_splits(root).items()} == \
        {k: [u.uid for u in v] for k, v in splits.items()}


def test_prep_writes_manifests_transcripts_and_dictionary(mini_timit, tmp_path):
    root, audio = mini_timit
    out = tmp_path / "out"
    res = timit_prep.main(str(root), str(out))
    assert res["n_utts"] == {"train": 4, "dev": 2, "test": 2}
    d = load_phone_dictionary(out / "dict.phn.txt")
    lines = (out / "dict.phn.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(PHONES_39)
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in lines}
    assert counts["sil"] == 2 * (FOLDED_2.count("sil") + FOLDED.count("sil")) and counts["aa"] == 2
    assert counts["iy"] == 0 and sum(counts.values()) == 2 * (len(FOLDED) + len(FOLDED_2))
    for split in ("train", "dev", "test"):
        m = read_manifest(out / f"{split}.tsv")
        assert m.root == str(out.resolve())
        t = transcripts_for_manifest(read_phone_transcripts(out / f"{split}.phn"), m)
        for entry, tr in zip(m.entries, t):
            uid = m.uid(entry)
            assert entry.relpath == f"wav/{split}/{uid}.wav"
            expected = FOLDED_2 if "_si" in uid else FOLDED[::-1]
            assert list(tr.phones) == expected
            assert len(encode_phones(tr, d)) == len(expected)
            wav = read_audio(m.audio_path(entry), expected_len=entry.n_samples)
            assert np.array_equal(np.round(wav * 32768).astype(np.int16), audio[uid])
            path = Path(m.audio_path(entry))
            assert sf.info(str(path)).format == "WAV" and sf.info(str(path)).subtype == "PCM_16"
            assert path.is_symlink() == uid.startswith("mxyz1")  # RIFF source linked, SPHERE converted
            if not path.is_symlink():
                assert not is_sphere(path)
    # a rerun rewrites the same outputs
    before = {p.name: p.read_bytes() for p in out.glob("*.*")}
    timit_prep.main(str(root), str(out))
    assert {p.name: p.read_bytes() for p in out.glob("*.*")} == before


def test_phn_past_the_audio_names_file_and_line(mini_timit, tmp_path):
    root, _ = mini_timit
    phn = root / "TEST" / "DR1" / "MDAB0" / "SX20.PHN"
    lines = phn.read_text().splitlines()
    lines[-1] = f"{15 * SEG} {16 * SEG + 37 + 1} h#"  # one sample past the end of the audio
    phn.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=re.escape(f"{phn}:{len(lines)}: segment") + ".*runs past the end"):
        timit_prep.main(str(root), str(tmp_path / "out"))
    with pytest.raises(SystemExit) as e:
        timit_prep.cli([str(root), str(tmp_path / "out")])
    assert e.value.code == 2


@pytest.mark.parametrize("line, match", [
    ("0 160 xx", "'xx' is not one of the 61 TIMIT phone labels"),
    ("0 x h#", "expected 'start end phone'"),
    ("160 160 h#", "not after its start"),
])
def test_bad_phn_lines(tmp_path, line, match):
    phn = tmp_path / "SA1.PHN"
    phn.write_text(f"0 160 h#\n{line}\n")
    with pytest.raises(UserError, match=f"{re.escape(str(phn))}:2: .*{re.escape(match)}"):
        fold_phones(read_phn(phn, n_samples=1000), phn)


def test_not_a_timit_folder(tmp_path):
    (tmp_path / "TRAIN").mkdir()
    with pytest.raises(UserError, match="has no TEST folder"):
        timit_splits(tmp_path)
    (tmp_path / "TEST").mkdir()
    with pytest.raises(UserError, match="no train utterance"):
        timit_splits(tmp_path)


def test_prep_command_loads_neither_torch_nor_fairseq():
    code = ("import sys, fairseq_ext.data.timit_prep; "
            "print(sorted(m for m in ('torch', 'fairseq') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
