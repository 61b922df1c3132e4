"""Phone transcripts (uid<TAB>p1 p2 ...), dict.phn.txt and the CTC length check: contents, and errors
naming file and line."""

from __future__ import annotations

import re

import pytest

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.data.phone_transcripts import (
    CTC_BLANK, check_ctc_frames, ctc_blank_index, ctc_min_frames, encode_phones, load_phone_dictionary,
    phone_counts, read_phone_transcripts, transcripts_for_manifest, write_phone_dictionary,
    write_phone_transcripts)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_keeps_order_phones_and_line_numbers(tmp_path):
    p = write(tmp_path / "train.phn", "u2\tsil b aa sil\nu1\tsil  n\n")
    t = read_phone_transcripts(p)
    assert list(t) == ["u2", "u1"]
    assert t["u2"].phones == ("sil", "b", "aa", "sil")
    assert t["u1"].phones == ("sil", "n")  # runs of spaces are one separator
    assert t["u1"].where == f"{p}:2"


def test_write_then_read_round_trips(tmp_path):
    items = [("a_1", ["sil", "iy"]), ("a_2", ["k", "ae", "t"])]
    p = write_phone_transcripts(tmp_path / "x.phn", items)
    assert p.read_text() == "a_1\tsil iy\na_2\tk ae t\n"
    assert [(u, list(t.phones)) for u, t in read_phone_transcripts(p).items()] == items
    with pytest.raises(ValueError):
        write_phone_transcripts(tmp_path / "y.phn", [("a b", ["x"])])


@pytest.mark.parametrize("text, line, words", [
    ("u1\ta b\n\nu2\tc\n", 2, "blank line"),
    ("u1\ta b\nu1\tc\n", 2, "listed twice (first at line 1)"),
    ("u1 a b\n", 1, "a tab after the utterance id"),
    ("u1\ta,b,b\n", 1, "frame-level phone reference"),
    ("u1\ta\nu2\t  \n", 2, "has no phones"),
])
def test_bad_transcripts_name_file_and_line(tmp_path, text, line, words):
    p = write(tmp_path / "bad.phn", text)
    with pytest.raises(UserError, match=re.escape(f"{p}:{line}: ") + ".*" + re.escape(words)):
        read_phone_transcripts(p)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_phone_transcripts(tmp_path / "nope.phn")
    with pytest.raises(UserError, match="is empty"):
        read_phone_transcripts(write(tmp_path / "e.phn", ""))


def test_dictionary_is_fairseq_compatible_with_blank_first(tmp_path):
    from fairseq.data import Dictionary

    t = read_phone_transcripts(write(tmp_path / "t.phn", "u1\tsil k ae t sil\nu2\tsil ae\n"))
    counts = phone_counts(t.values())
    assert counts == {"ae": 2, "k": 1, "sil": 3, "t": 1}
    d_path = write_phone_dictionary(tmp_path / "dict.phn.txt", counts)
    assert d_path.read_text() == "ae 2\nk 1\nsil 3\nt 1\n"
    d = load_phone_dictionary(d_path)
    assert d == Dictionary.load(str(d_path))
    assert [d.index(p) for p in counts] == [4, 5, 6, 7]  # after <s> <pad> </s> <unk>
    assert len(d) == 8 and ctc_blank_index(d) == 0 and d[0] == CTC_BLANK
    assert encode_phones(t["u1"], d) == [6, 5, 4, 7, 6]


def test_phone_missing_from_dictionary_names_transcript_line(tmp_path):
    d_path = write(tmp_path / "dict.phn.txt", "a 1\nb 1\n")
    d = load_phone_dictionary(d_path)
    t = read_phone_transcripts(write(tmp_path / "t.phn", "u1\ta b\nu2\ta zz b\n"))
    assert encode_phones(t["u1"], d, str(d_path)) == [4, 5]
    with pytest.raises(UserError, match=f"{tmp_path / 't.phn'}:2: phone 'zz' of utterance u2 is not in {d_path}"):
        encode_phones(t["u2"], d, str(d_path))
    t = read_phone_transcripts(write(tmp_path / "s.phn", "u3\ta <unk>\n"))
    with pytest.raises(UserError, match="'<unk>'"):  # a special symbol is not a phone
        encode_phones(t["u3"], d)


@pytest.mark.parametrize("text, match", [
    ("a 1\nb\n", ":2: expected 'phone count'"),
    ("a 1\nb x\n", ":2: expected 'phone count'"),
    ("a 1\nb 2\na 3\n", ":3: phone a is listed twice"),
    ("<unk> 1\n", ":1: <unk> is one of fairseq's special symbols"),
    ("", "is empty"),
])
def test_bad_dictionary_names_line(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        load_phone_dictionary(write(tmp_path / "dict.phn.txt", text))
    with pytest.raises(UserError, match="does not exist"):
        load_phone_dictionary(tmp_path / "none.txt")


def test_ctc_frames_check_counts_blanks_between_repeats(tmp_path):
    assert ctc_min_frames(["a", "a", "b"]) == 4
    assert ctc_min_frames([3, 4, 4, 4, 3]) == 7
    assert ctc_min_frames([]) == 0
    t = read_phone_transcripts(write(tmp_path / "t.phn", "u0\tb\nu1\ta a b\n"))["u1"]
    check_ctc_frames(t, 4)
    with pytest.raises(UserError, match=f"{tmp_path / 't.phn'}:2: utterance u1 has 3 phones .*1 repeated.*"
                                        f"at least 4 frames.*only 3"):
        check_ctc_frames(t, 3)


def test_transcripts_follow_the_manifest(tmp_path):
    write(tmp_path / "train.tsv", "/audio\nspk/u2.wav\t100\nu1.wav\t200\n")
    m = read_manifest(tmp_path / "train.tsv")
    t = read_phone_transcripts(write(tmp_path / "train.phn", "u1\ta\nu2\tb c\nu3\td\n"))
    assert [x.uid for x in transcripts_for_manifest(t, m)] == ["u2", "u1"]
    write(tmp_path / "valid.tsv", "/audio\nu1.wav\t200\nu9.wav\t5\n")
    with pytest.raises(UserError, match=f"{tmp_path / 'valid.tsv'}:3: utterance u9 has no phone transcript"):
        transcripts_for_manifest(t, read_manifest(tmp_path / "valid.tsv"))
