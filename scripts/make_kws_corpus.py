"""Usage: python scripts/make_kws_corpus.py OUT_DIR [--keywords 10] [--voices 128] [--takes 2]
                                  [--valid-voices 16] [--test-voices 16] [--seed 0]
                                  [--snr-db 5,25] [--duration 1.0] [--force]

Generate a synthetic keyword-spotting corpus in the Speech Commands layout, for the front-end
sweep (settings A-D, docs/speaker.md) without downloading data.

Each keyword is a fixed phone sequence (from the phone inventory of
simple_kmeans.make_demo_corpus, synthesised with its source-filter model: glottal pulses through
formant resonators for vowels and nasals, band-pass noise for fricatives, closure + burst for
stops). The keywords come in confusable groups (sea/she/fee/knee/me differ in one consonant,
moon/noon in the nasal, cat/cot in the vowel), so the task depends on spectral detail. Every
clip is spoken by a generated voice (F0, vocal-tract length, spectral tilt, loudness as in the
demo corpus) with a random pitch shift (x0.85..1.18), tempo (x0.8..1.25, plus +-20% per phone),
formant jitter, onset position, and additive coloured noise at a random SNR (--snr-db range),
in a clip of --duration seconds.

Writes into OUT_DIR:
  {keyword}/{voice}_nohash_{take}.wav   16-bit mono 16 kHz clips (one folder per class)
  validation_list.txt, testing_list.txt  relative paths of the clips of the last
                                         --valid-voices + --test-voices voices (speaker-disjoint
                                         splits; the rest is training data)
  keywords.txt                           keyword<TAB>phones (not .tsv: a .tsv in the root would make
                                         the task read the folder as a manifest folder)
  corpus.json                            the settings and counts

The corpus is deterministic: clip (voice v, keyword k, take t) depends only on (--seed, v, k, t),
so a larger --voices adds voices without changing the existing ones. A rerun with the same
settings whose files are all present does nothing; otherwise every clip is rewritten (to a
temporary name, then renamed) and clips of an earlier, larger corpus are removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402
from simple_kmeans.recipes.kws_corpus import KEYWORDS, main  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="output folder (one sub-folder per keyword)")
    parser.add_argument("--keywords", type=int, default=10, help=f"number of keywords, 2..{len(KEYWORDS)}")
    parser.add_argument("--voices", type=int, default=128, help="number of generated voices")
    parser.add_argument("--takes", type=int, default=2, help="clips per voice and keyword")
    parser.add_argument("--valid-voices", type=int, default=16, help="voices of validation_list.txt")
    parser.add_argument("--test-voices", type=int, default=16, help="voices of testing_list.txt")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the corpus is deterministic)")
    parser.add_argument("--snr-db", default="5,25", help="SNR range of the added noise in dB: LOW,HIGH")
    parser.add_argument("--duration", type=float, default=1.0, help="clip length in seconds")
    parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate in Hz")
    parser.add_argument("--force", action="store_true", help="rewrite the corpus even if it is complete")
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
