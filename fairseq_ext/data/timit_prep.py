"""Usage: fairseq-ext-timit-prep TIMIT_ROOT OUT_DIR [--include-sa] [--merge-repeats]

Turn a TIMIT copy into the phone-recognition task's inputs, in OUT_DIR:

* ``{train,dev,test}.tsv``: fairseq manifests (line 1 the absolute OUT_DIR, then
  ``wav/<split>/<uid>.wav<TAB>n_samples``). A NIST SPHERE ``.WAV`` is converted to a 16-bit RIFF
  ``.wav`` there (same samples); a RIFF source is symlinked (copied when links are not possible).
  The file names are the utterance ids (``<speaker>_<sentence>``, lower case), so the manifests'
  utterance ids match the transcripts.
* ``{train,dev,test}.phn``: phone transcripts ``uid<TAB>p1 p2 ...`` in manifest order, folded from
  the 61 TIMIT labels to the standard 39 phones (``q`` removed).
* ``dict.phn.txt``: the 39 phones (sorted) with their training counts, a fairseq dictionary.

Splits: train = TIMIT's TRAIN folder, dev = the standard 50 dev speakers of TEST, test = the 24-speaker
core test set; the SA sentences are left out unless ``--include-sa``. A ``.PHN`` file whose segments
run past its audio, a label outside the 61 TIMIT phones, or audio that is not 16 kHz mono is an error
naming the file (and line). Outputs are written atomically; a rerun rewrites them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output, make_dirs
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.data.phone_transcripts import write_phone_dictionary, write_phone_transcripts
from fairseq_ext.data.sphere import is_sphere, read_sphere
from fairseq_ext.data.timit import PHONES_39, SAMPLE_RATE, SPLITS, TimitUtterance, fold_phones, read_phn, timit_splits

logger = logging.getLogger("timit_prep")


def read_timit_audio(utt: TimitUtterance) -> Tuple[Optional[np.ndarray], int]:
    """``(samples, n_samples)`` of ``utt``'s audio, checked to be 16 kHz mono: int16 samples ``(S,)`` for a
    SPHERE file, None for a RIFF file (only its header is read)."""
    import soundfile as sf

    if is_sphere(utt.audio):
        samples, sr = read_sphere(utt.audio)
        n, channels = len(samples), 1
    else:
        samples = None
        try:
            info = sf.info(str(utt.audio))
        except Exception as e:  # soundfile raises several types for unreadable files
            raise UserError(f"cannot read audio file {utt.audio}: {e}") from None
        n, sr, channels = int(info.frames), int(info.samplerate), int(info.channels)
    if sr != SAMPLE_RATE or channels != 1:
        raise UserError(f"{utt.audio}: {channels} channel(s) at {sr} Hz; TIMIT audio is mono at {SAMPLE_RATE} Hz")
    return samples, n


def place_audio(utt: TimitUtterance, samples: Optional[np.ndarray], dest: Path) -> None:
    """Write ``utt``'s audio to ``dest``: SPHERE ``samples`` as a 16-bit RIFF file, a RIFF source symlinked
    (copied where links are not possible)."""
    import soundfile as sf

    if samples is not None:
        with atomic_output(dest, "wb") as f:
            sf.write(f, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        return
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    try:
        os.symlink(utt.audio.resolve(), dest)
    except OSError:
        shutil.copyfile(utt.audio, dest)


def main(timit_root: str, out_dir: str, include_sa: bool = False, merge_repeats: bool = False) -> Dict[str, object]:
    """Write manifests, transcripts and ``dict.phn.txt`` (see the module docstring).

    Returns:
        ``{"manifests": {split: Path}, "transcripts": {split: Path}, "dict": Path, "n_utts": {split: int}}``.
    """
    out = make_dirs(out_dir).resolve()
    splits = timit_splits(timit_root, include_sa=include_sa)
    result: Dict[str, object] = {"manifests": {}, "transcripts": {}, "n_utts": {}}
    counts = {p: 0 for p in PHONES_39}
    for split in SPLITS:
        wav_dir = make_dirs(out / "wav" / split)
        rows: List[Tuple[str, int]] = []
        transcripts: List[Tuple[str, List[str]]] = []
        for utt in progress(splits[split], desc=f"timit {split}", unit="utt"):
            samples, n = read_timit_audio(utt)
            phones = fold_phones(read_phn(utt.phn, n_samples=n), utt.phn, merge_repeats=merge_repeats)
            if not phones:
                raise UserError(f"{utt.phn}: no phone left after folding (only 'q' labels)")
            place_audio(utt, samples, wav_dir / f"{utt.uid}.wav")
            rows.append((f"wav/{split}/{utt.uid}.wav", n))
            transcripts.append((utt.uid, phones))
            if split == "train":
                for p in phones:
                    counts[p] += 1
        with atomic_output(out / f"{split}.tsv") as f:
            f.write(f"{out}\n")
            f.writelines(f"{rel}\t{n}\n" for rel, n in rows)
        result["manifests"][split] = out / f"{split}.tsv"
        result["transcripts"][split] = write_phone_transcripts(out / f"{split}.phn", transcripts)
        result["n_utts"][split] = len(rows)
        hours = sum(n for _, n in rows) / SAMPLE_RATE / 3600
        logger.info("%s: %d utterances (%.2f h) -> %s", split, len(rows), hours, out / f"{split}.tsv")
    result["dict"] = write_phone_dictionary(out / "dict.phn.txt", counts)
    unseen = [p for p, c in counts.items() if c == 0]
    if unseen:
        logger.warning("phones never seen in train: %s", " ".join(unseen))
    logger.info("wrote %s (%d phones; CTC adds the blank <s>)", result["dict"], len(counts))
    return result


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timit_root", help="TIMIT folder holding TRAIN and TEST (upper or lower case)")
    parser.add_argument("out_dir", help="output folder for manifests, transcripts, dict.phn.txt and wav/")
    parser.add_argument("--include-sa", action="store_true", help="keep the SA1/SA2 dialect sentences")
    parser.add_argument("--merge-repeats", action="store_true",
                        help="collapse equal neighbouring phones after folding (e.g. 'tcl pau' -> one 'sil')")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
