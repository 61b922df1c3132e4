"""Usage: python scripts/probe.py TSV CKPT [--layers all|0,6,12] (--spk-file SPLIT.spk | --speakers uid2spk.tsv)
              [--phones phones.tsv] [--phone-rate 100] [--n-clusters 100] [--kmeans-frames 30000]
              [--speaker-purity] [--test-fraction 0.25] [--seed 0] [--device auto] [--json OUT.json]

Probe the frozen layer features of a HuBERT-family checkpoint (fairseq HuBERT, this package's
disentangled HuBERT, fine-tuned HuBERT-CTC) for speaker and phone information, layer by layer,
to see how well a model separates content from speaker (see fairseq_ext/probe.py).

For every requested layer (1-based as in fairseq; 0 = the transformer's input):
  spk acc   speaker-identification accuracy of a linear classifier (logistic regression) on
            mean-pooled utterance features, trained on ~75% of each speaker's utterances and
            tested on the rest (split fixed by --seed); printed with the chance level
  PNMI, phn pur, cls pur
            with --phones: k-means (--n-clusters) on the layer's frames, then phone-normalised
            mutual information, phone purity and cluster purity as in fairseq's
            measure_teacher_quality.py (model frames repeated to --phone-rate)
  spk pur, spk NMI
            with --speaker-purity: the same k-means codes against the speaker of each frame
            (low = codes carry little speaker identity)

Inputs: TSV is a fairseq manifest (line 1: audio root; then relpath<TAB>n_samples). Speakers
come from --spk-file (one name per manifest line, speaker_labels.py's SPLIT.spk) or
--speakers (uid<TAB>speaker lines, uid = file basename without extension). --phones has lines
uid<TAB>p1,p2,... with one phone per frame at --phone-rate Hz (the demo corpus' phones.tsv).
The table goes to stdout; --json also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402


def main(tsv: str, ckpt: str, json_path: Optional[str] = None, **options) -> dict:
    """Run :func:`fairseq_ext.probe.run_probe_report` and print its table; returns the report."""
    from fairseq_ext.probe import report_text, run_probe_report

    report = run_probe_report(tsv, ckpt, json_path=json_path, **options)
    print(report_text(report), flush=True)
    return report


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv", help="manifest file ({split}.tsv)")
    parser.add_argument("ckpt", help="HuBERT-family checkpoint")
    parser.add_argument("--layers", default="all", help="'all' (default) or comma-separated 1-based layers; 0 = "
                                                        "transformer input")
    parser.add_argument("--spk-file", default=None, help="speaker per manifest line ({split}.spk)")
    parser.add_argument("--speakers", default=None, help="uid<TAB>speaker table")
    parser.add_argument("--phones", default=None, help="frame-level phone references uid<TAB>p1,p2,...")
    parser.add_argument("--phone-rate", type=float, default=100.0, help="frame rate of --phones in Hz (default 100)")
    parser.add_argument("--n-clusters", type=int, default=100, help="k-means clusters per layer (default 100)")
    parser.add_argument("--kmeans-frames", type=int, default=30000,
                        help="frames per layer used to fit k-means (default 30000)")
    parser.add_argument("--speaker-purity", action="store_true", help="also measure speaker purity of the codes")
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="share of each speaker's utterances held out for the speaker probe (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and k-means")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON here")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle everything in the checkpoint (only for files you trust)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
