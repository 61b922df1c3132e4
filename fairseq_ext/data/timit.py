"""The TIMIT corpus: its folder layout, ``.PHN`` phone segmentations, 61 -> 39 phone folding and the
standard train / dev / core-test speaker split.

Layout: ``TIMIT_ROOT/{TRAIN,TEST}/DR<d>/<SPEAKER>/<SENTENCE>.{WAV,PHN}``, in upper or lower case.
``.WAV`` is NIST SPHERE (:mod:`fairseq_ext.data.sphere`) or RIFF; ``.PHN`` has one ``start end phone``
line per segment, ``start``/``end`` in samples at 16 kHz. Utterance ids are ``<speaker>_<sentence>``
in lower case (``fcjf0_si1027``), unique across the corpus.

Phone folding (Lee & Hon, 1989, the mapping Kaldi's TIMIT recipe scores with): the 61 TIMIT labels
become 39 classes: closures and pauses (``bcl dcl gcl pcl tcl kcl h# pau epi``) are ``sil``,
``ao`` -> ``aa``, ``ax ax-h`` -> ``ah``, ``axr`` -> ``er``, ``el`` -> ``l``, ``em`` -> ``m``,
``en nx`` -> ``n``, ``eng`` -> ``ng``, ``hv`` -> ``hh``, ``ix`` -> ``ih``, ``ux`` -> ``uw``,
``zh`` -> ``sh``; the glottal stop ``q`` is dropped.

Splits: ``train`` is every speaker of ``TRAIN`` (462); ``dev`` the 50 speakers of ``TEST`` in
:data:`DEV_SPEAKERS`; ``test`` the 24-speaker core test set :data:`CORE_TEST_SPEAKERS` (two men and
one woman per dialect region). The dialect sentences (``SA1``, ``SA2``) are read by every speaker and
are left out by default.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fairseq_ext.base.errors import UserError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# The 61 TIMIT labels and their class in the 39-phone set (None: the label is deleted).
_SAME = ("aa ae ah aw ay b ch d dh dx eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th uh uw v w y z")
FOLD_61_TO_39: Dict[str, Optional[str]] = {p: p for p in _SAME.split()}
FOLD_61_TO_39.update({
    # silences: closures of the stops, pauses, epenthetic silence, utterance edges
    "bcl": "sil", "dcl": "sil", "gcl": "sil", "pcl": "sil", "tcl": "sil", "kcl": "sil",
    "h#": "sil", "pau": "sil", "epi": "sil",
    # vowel and consonant allophones merged with their neighbour class
    "ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "ix": "ih", "ux": "uw",
    "el": "l", "em": "m", "en": "n", "nx": "n", "eng": "ng", "hv": "hh", "zh": "sh",
    "q": None,  # the glottal stop is removed
})
PHONES_39: Tuple[str, ...] = tuple(sorted({p for p in FOLD_61_TO_39.values() if p is not None}))

DEV_SPEAKERS: Tuple[str, ...] = tuple("""
faks0 fdac1 fjem0 mgwt0 mjar0 mmdb1 mmdm2 mpdf0 fcmh0 fkms0 mbdg0 mbwm0 mcsh0 fadg0 fdms0 fedw0 mgjf0
mglb0 mrtk0 mtaa0 mtdt0 mthc0 mwjg0 fnmr0 frew0 fsem0 mbns0 mmjr0 mdls0 mdlf0 mdvc0 mers0 fmah0 fdrw0
mrcs0 mrjm4 fcal1 mmwh0 fjsj0 majc0 mjsw0 mreb0 fgjd0 fjmg0 mroa0 mteb0 mjfc0 mrjr0 fmml0 mrws1
""".split())
CORE_TEST_SPEAKERS: Tuple[str, ...] = tuple("""
mdab0 mwbt0 felc0 mtas1 mwew0 fpas0 mjmp0 mlnt0 fpkt0 mlll0 mtls0 fjlm0 mbpm0 mklt0 fnlp0 mcmj0 mjdh0
fmgd0 mgrt0 mnjm0 fdhc0 mjln0 mpam0 fmld0
""".split())
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class PhoneSegment:
    """One ``.PHN`` line: ``[start, end)`` in samples, the TIMIT label, and its 1-based line number."""

    start: int
    end: int
    phone: str
    line: int


@dataclass(frozen=True)
class TimitUtterance:
    """One TIMIT utterance: where its files are and who said what."""

    part: str  # "train" or "test": the TIMIT folder it is in
    dialect: str  # "dr1".."dr8"
    speaker: str  # lower case, e.g. "fcjf0"
    sentence: str  # lower case, e.g. "sa1", "si1027", "sx127"
    audio: Path
    phn: Path

    @property
    def uid(self) -> str:
        return f"{self.speaker}_{self.sentence}"


def fold_phones(segments: List[PhoneSegment], path: os.PathLike | str = "", merge_repeats: bool = False) -> List[str]:
    """The 39-phone transcript of ``segments`` (``q`` removed; ``merge_repeats`` collapses equal neighbours
    such as ``tcl`` ``pau`` -> ``sil``).

    Raises:
        UserError: a label outside the 61 TIMIT phones (naming the ``.PHN`` file and line).
    """
    out: List[str] = []
    for seg in segments:
        if seg.phone not in FOLD_61_TO_39:
            raise UserError(f"{path}:{seg.line}: {seg.phone!r} is not one of the 61 TIMIT phone labels")
        folded = FOLD_61_TO_39[seg.phone]
        if folded is None or (merge_repeats and out and out[-1] == folded):
            continue
        out.append(folded)
    return out


def read_phn(path: os.PathLike | str, n_samples: Optional[int] = None) -> List[PhoneSegment]:
    """Read a ``.PHN`` file (``start end phone`` per line, samples at 16 kHz).

    Args:
        path: the ``.PHN`` file.
        n_samples: the audio's length; a segment ending after it is an error.
    Raises:
        UserError: a malformed line, ``end <= start``, a segment running past the audio, or no segment;
            naming file and line.
    """
    segments = []
    with open(path, encoding="ascii", errors="replace") as f:
        for i, text in enumerate(f.read().splitlines(), start=1):
            if not text.strip():
                continue
            parts = text.split()
            if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
                raise UserError(f"{path}:{i}: expected 'start end phone' (sample numbers and a label), got {text!r}")
            start, end, phone = int(parts[0]), int(parts[1]), parts[2].lower()
            if end <= start:
                raise UserError(f"{path}:{i}: segment ends at sample {end}, not after its start {start}")
            if n_samples is not None and end > n_samples:
                raise UserError(f"{path}:{i}: segment {start}-{end} ({phone}) runs past the end of the audio "
                                f"({n_samples} samples = {n_samples / SAMPLE_RATE:.3f} s); the .PHN file does not "
                                f"belong to this audio or the audio is truncated")
            segments.append(PhoneSegment(start, end, phone, i))
    if not segments:
        raise UserError(f"{path}: no phone segments")
    return segments


def _subdirs(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _find_part(root: Path, name: str) -> Path:
    matches = [p for p in _subdirs(root) if p.name.lower() == name]
    if not matches:
        raise UserError(f"{root} has no {name.upper()} folder: give the TIMIT root, the folder that holds TRAIN and "
                        f"TEST (upper or lower case); found {[p.name for p in _subdirs(root)]}")
    return matches[0]


def scan_timit(root: os.PathLike | str, part: str) -> List[TimitUtterance]:
    """Every utterance of ``root``'s ``TRAIN`` (``part="train"``) or ``TEST`` folder with both a ``.PHN``
    and a ``.WAV`` file, sorted by dialect, speaker, sentence."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"TIMIT root {root} is not a folder")
    out = []
    for dr in _subdirs(_find_part(root, part)):
        for spk in _subdirs(dr):
            files = {p.name: p for p in spk.iterdir() if p.is_file()}
            for name, phn in sorted(files.items()):
                stem, ext = os.path.splitext(name)
                if ext.lower() != ".phn":
                    continue
                audio = [files[stem + e] for e in (".WAV", ".wav") if stem + e in files]
                if not audio:
                    logger.warning("%s has no audio file %s.WAV next to it: left out", phn, stem)
                    continue
                out.append(TimitUtterance(part, dr.name.lower(), spk.name.lower(), stem.lower(), audio[0], phn))
    return sorted(out, key=lambda u: (u.dialect, u.speaker, u.sentence))


def timit_splits(root: os.PathLike | str, include_sa: bool = False) -> Dict[str, List[TimitUtterance]]:
    """The standard ``train`` / ``dev`` / ``test`` (core test) utterances of a TIMIT copy.

    Raises:
        UserError: a split has no utterance (not a TIMIT folder, or an incomplete copy).
    """
    splits = {"train": scan_timit(root, "train")}
    test_part = scan_timit(root, "test")
    for name, speakers in (("dev", DEV_SPEAKERS), ("test", CORE_TEST_SPEAKERS)):
        splits[name] = [u for u in test_part if u.speaker in speakers]
        missing = sorted(set(speakers) - {u.speaker for u in splits[name]})
        if missing:
            logger.warning("%s: %d of the %d standard %s speakers are missing from %s: %s", name, len(missing),
                           len(speakers), name, root, " ".join(missing))
    for name, utts in splits.items():
        if not include_sa:
            splits[name] = utts = [u for u in utts if not u.sentence.startswith("sa")]
        if not utts:
            raise UserError(f"{root}: no {name} utterance found (TRAIN/DR*/SPEAKER/*.PHN + .WAV for train; "
                            f"the standard speakers in TEST/DR*/ for dev and test)")
    return splits


__all__ = ["CORE_TEST_SPEAKERS", "DEV_SPEAKERS", "FOLD_61_TO_39", "PHONES_39", "PhoneSegment", "SAMPLE_RATE",
           "SPLITS", "TimitUtterance", "fold_phones", "read_phn", "scan_timit", "timit_splits"]
