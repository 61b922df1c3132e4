"""Usage: python scripts/speaker_infer.py CHECKPOINT INPUT OUTPUT_CSV [--batch-size 32] [--device cpu]
                                       [--ssl-checkpoint PATH]

Predict one label per utterance with a ``conformer_speaker`` checkpoint (task
``speaker_classification``) and write a Kaggle-style CSV::

    Id,Category
    uttr-0a1b.pt,id10473

INPUT is a homework ``testdata.json`` (precomputed features; Id = its ``feature_path``) or a fairseq
manifest ``.tsv`` (raw audio; Id = the manifest's relative path). When the manifest has labels
(``{name}.lbl`` next to it), the accuracy is logged as well. Utterances are batched by length and
padded; the model's predictions do not depend on the padding. The label names come from the
checkpoint, so the training data need not be present. Models with a frozen SSL upstream reload
their SSL checkpoint: pass --ssl-checkpoint when it has moved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.speaker_inference import write_predictions  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="conformer_speaker checkpoint (checkpoint_best.pt)")
    parser.add_argument("input", help="testdata.json (homework features) or a manifest .tsv (audio)")
    parser.add_argument("output", help="CSV to write (Id,Category)")
    parser.add_argument("--batch-size", type=int, default=32, help="utterances per batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--ssl-checkpoint", default=None,
                        help="new path of the frozen SSL checkpoint the model was trained on")
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(write_predictions, get_parser(), argv)


if __name__ == "__main__":
    cli()
