"""Phone transcripts (``uid<TAB>p1 p2 ...``) and their phone dictionary ``dict.phn.txt``.

A phone transcript file has one line per utterance: the utterance id (the manifest file's basename
without extension, as :meth:`fairseq_ext.base.manifest.Manifest.uid` gives it), a tab, then the
utterance's phones separated by single spaces. It is *not* the frame-level phone reference of
:mod:`fairseq_ext.label_quality` (``uid<TAB>p1,p2,...``, one phone per frame): the reader refuses
comma-separated lines with a message saying so.

The dictionary is a fairseq :class:`~fairseq.data.Dictionary` file (``phone count`` per line). fairseq
puts its four special symbols first (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3), so phone ``i`` of
the file has index ``4 + i``. CTC uses ``<s>`` (index 0) as the blank, as fairseq's own ``ctc``
criterion does: a CTC output layer therefore has ``len(dictionary)`` classes.

Every problem is a :class:`~fairseq_ext.base.errors.UserError` naming the file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Sequence, Tuple

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError

if TYPE_CHECKING:  # fairseq is imported only when a dictionary is loaded
    from fairseq.data import Dictionary

SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")
"""fairseq's special symbols, indices 0..3 of every :class:`~fairseq.data.Dictionary`."""

CTC_BLANK = "<s>"
"""The CTC blank symbol: fairseq's ``<s>`` (index 0), the blank of fairseq's ``ctc`` criterion."""


@dataclass(frozen=True)
class PhoneTranscript:
    """One utterance's phones and where they were read (``path:line``, for error messages)."""

    uid: str
    phones: Tuple[str, ...]
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_phone_transcripts(path: os.PathLike | str) -> Dict[str, PhoneTranscript]:
    """Read ``uid<TAB>p1 p2 ...`` lines, in file order, keyed by uid.

    Raises:
        UserError: missing file, blank line, line without a tab or without phones, a
            comma-separated (frame-level) line, or a uid seen twice; each names file and line.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"phone transcript file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out: Dict[str, PhoneTranscript] = {}
    for i, text in enumerate(lines, start=1):
        where = f"{path}:{i}"
        if not text.strip():
            raise UserError(f"{where}: blank line; every line must be 'uid<TAB>p1 p2 ...': remove it")
        uid, tab, rest = text.partition("\t")
        uid = uid.strip()
        if not tab or not uid:
            raise UserError(f"{where}: expected 'uid<TAB>p1 p2 ...' (a tab after the utterance id), got {text!r}")
        if "," in rest:
            raise UserError(f"{where}: phones separated by commas look like a frame-level phone reference "
                            f"(uid<TAB>p1,p2,..., read by fairseq_ext.label_quality); a phone transcript "
                            f"lists the utterance's phones separated by spaces")
        phones = tuple(rest.split())
        if not phones:
            raise UserError(f"{where}: utterance {uid} has no phones; give at least one or leave the utterance "
                            f"out of the manifest")
        if uid in out:
            raise UserError(f"{where}: utterance {uid} is listed twice (first at line {out[uid].line}); "
                            f"keep one line per utterance")
        out[uid] = PhoneTranscript(uid, phones, path, i)
    if not out:
        raise UserError(f"{path}: phone transcript file is empty")
    return out


def write_phone_transcripts(path: os.PathLike | str, items: Iterable[Tuple[str, Sequence[str]]]) -> Path:
    """Write ``(uid, phones)`` pairs as ``uid<TAB>p1 p2 ...`` lines (atomically)."""
    path = Path(path)
    with atomic_output(path) as f:
        for uid, phones in items:
            if not uid or any(c.isspace() for c in uid) or not phones:
                raise ValueError(f"bad transcript for {path}: uid {uid!r}, phones {list(phones)!r}")
            if any(not p or any(c.isspace() or c == "," for c in p) for p in phones):
                raise ValueError(f"utterance {uid}: phones must be non-empty without spaces or commas: {phones!r}")
            f.write(f"{uid}\t{' '.join(phones)}\n")
    return path


def transcripts_for_manifest(transcripts: Mapping[str, PhoneTranscript], manifest) -> List[PhoneTranscript]:
    """The transcripts of ``manifest``'s utterances (a :class:`fairseq_ext.base.manifest.Manifest`), in its order.

    Raises:
        UserError: an utterance of the manifest has no transcript (naming manifest file and line).
    """
    out = []
    for entry in manifest.entries:
        uid = manifest.uid(entry)
        if uid not in transcripts:
            some = next(iter(transcripts.values()))
            raise UserError(f"{manifest.path}:{entry.line}: utterance {uid} has no phone transcript in "
                            f"{some.path}; add a line '{uid}<TAB>p1 p2 ...' or leave it out of the manifest")
        out.append(transcripts[uid])
    return out


# --------------------------------------------------------------------------- dictionary


def write_phone_dictionary(path: os.PathLike | str, counts: Mapping[str, int]) -> Path:
    """Write a fairseq dictionary file, ``phone count`` per line in ``counts``' order (atomically)."""
    path = Path(path)
    with atomic_output(path) as f:
        for phone, count in counts.items():
            if phone in SPECIAL_SYMBOLS or not phone or any(c.isspace() for c in phone):
                raise ValueError(f"{phone!r} cannot be a phone of {path}")
            f.write(f"{phone} {int(count)}\n")
    return path


def phone_counts(transcripts: Iterable[PhoneTranscript]) -> Dict[str, int]:
    """How often each phone occurs, phones sorted by name."""
    counts: Dict[str, int] = {}
    for t in transcripts:
        for p in t.phones:
            counts[p] = counts.get(p, 0) + 1
    return dict(sorted(counts.items()))


def load_phone_dictionary(path: os.PathLike | str) -> "Dictionary":
    """Load ``dict.phn.txt`` as a fairseq :class:`~fairseq.data.Dictionary`, checking it line by line first.

    Raises:
        UserError: missing file, a line that is not ``phone count``, a special symbol or a phone
            listed twice, or no phone at all.
    """
    from fairseq.data import Dictionary

    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"phone dictionary {path} does not exist (write it with fairseq-ext-timit-prep, or one "
                        f"'phone count' line per phone)")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    seen: Dict[str, int] = {}
    for i, text in enumerate(lines, start=1):
        parts = text.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{path}:{i}: expected 'phone count', got {text!r}")
        if parts[0] in SPECIAL_SYMBOLS:
            raise UserError(f"{path}:{i}: {parts[0]} is one of fairseq's special symbols; remove the line")
        if parts[0] in seen:
            raise UserError(f"{path}:{i}: phone {parts[0]} is listed twice (first at line {seen[parts[0]]})")
        seen[parts[0]] = i
    if not seen:
        raise UserError(f"{path}: phone dictionary is empty")
    return Dictionary.load(path)


def encode_phones(transcript: PhoneTranscript, dictionary: "Dictionary",
                  dict_path: str = "the dictionary") -> List[int]:
    """Dictionary indices of ``transcript``'s phones.

    Raises:
        UserError: a phone is not in ``dictionary`` (naming the transcript's file and line).
    """
    ids = []
    for p in transcript.phones:
        if p not in dictionary.indices or p in SPECIAL_SYMBOLS:
            raise UserError(f"{transcript.where}: phone {p!r} of utterance {transcript.uid} is not in {dict_path}; "
                            f"add it to the dictionary or fix the transcript")
        ids.append(dictionary.indices[p])
    return ids


def ctc_blank_index(dictionary: "Dictionary") -> int:
    """Index of the CTC blank in ``dictionary`` (:data:`CTC_BLANK`, 0)."""
    return dictionary.index(CTC_BLANK)


def ctc_min_frames(labels: Sequence) -> int:
    """Fewest frames a CTC alignment of ``labels`` needs: one per label plus a blank between equal neighbours."""
    return len(labels) + sum(1 for a, b in zip(labels, labels[1:]) if a == b)


def check_ctc_frames(transcript: PhoneTranscript, n_frames: int) -> None:
    """Raise :class:`UserError` (naming file and line) when ``n_frames`` frames cannot hold ``transcript`` under CTC."""
    need = ctc_min_frames(transcript.phones)
    if n_frames < need:
        repeats = need - len(transcript.phones)
        raise UserError(f"{transcript.where}: utterance {transcript.uid} has {len(transcript.phones)} phones"
                        + (f" ({repeats} repeated neighbours need a blank between them)" if repeats else "")
                        + f", so CTC needs at least {need} frames, but its audio gives only {n_frames}: check that "
                        f"the transcript belongs to this audio, or use an upstream with a higher frame rate")


__all__ = ["CTC_BLANK", "SPECIAL_SYMBOLS", "PhoneTranscript", "check_ctc_frames", "ctc_blank_index", "ctc_min_frames",
           "encode_phones", "load_phone_dictionary", "phone_counts", "read_phone_transcripts",
           "transcripts_for_manifest", "write_phone_dictionary", "write_phone_transcripts"]
