"""Usage: python scripts/speaker_experiment.py OUT_DIR [--models simple,boss,boss_hubert,boss_hubert_random]
                                     (also: boss_uttnorm)
                                     [--seeds 1] [--max-update 600] [--pretrain-updates 1500]
                                     [--n-speakers 20] [--utts-per-speaker 20] [--threads 1] [--jobs 1]
                                     [--quick] [--json RESULTS.json] [--force]

Speaker identification on a generated multi-speaker corpus with the real trainer: the homework's
simple vs boss heads on log-Mels, and the boss head on frozen features of a HuBERT checkpoint,
all at equal updates. One command reproduces everything; reruns skip finished steps.

  1. corpus      OUT_DIR/corpus: simple_kmeans.make_demo_corpus, --n-speakers x --utts-per-speaker
                 utterances (corpus seed 1); OUT_DIR/data/{train,valid,test}.tsv + .lbl: per speaker
                 70% / 15% / 15% of the utterances (train / checkpoint selection / reported test)
  2. upstream    boss_hubert: a plain HuBERT (config/pretrain/dhubert_tiny, 2 layers x 64, speaker and
                 pitch heads off, HuBERT's loss: the "plain" variant of scripts/dhubert_experiment.py)
                 pre-trained for --pretrain-updates on MFCC k-means labels (K=100) of ANOTHER generated
                 corpus (16 other speakers x 24 utterances, corpus seed 2; OUT_DIR/pretrain);
                 boss_hubert_random: a randomly initialised fairseq HuBERT of the same size (control:
                 what the head gets from the architecture alone)
  3. heads       fairseq-hydra-train, --max-update updates of batch 32, validation every third,
                 lr 1e-3 with 100 warm-up updates and cosine decay, same seed per row:
                   simple              config/speaker/simple (1 Transformer layer, d_model 80, mean
                                       pooling, cross-entropy) on the fixed log-Mel front-end
                   boss                config/speaker/boss reduced to d_model 128, 2 Conformer layers,
                                       FFN 256, embed 128 (self-attention pooling, AM-softmax s=30
                                       m=0.2) on the fixed log-Mel front-end
                   boss_uttnorm        (not in the default list) the same with model.input_norm=utterance:
                                       per-utterance mean/variance normalisation of every Mel bin, which
                                       removes loudness and fixed spectral tilt (speaker traits of the
                                       generated voices that HuBERT's normalised CNN does not keep either)
                   boss_hubert         the same reduced boss on the frozen HuBERT (learned weighted sum of
                                       all hidden states; 64-frame crops at 50 Hz = the same 1.28 s of
                                       audio as 128 log-Mel frames)
                   boss_hubert_random  the same on the random-init HuBERT
                 Run dirs OUT_DIR/runs/{model}_s{seed} (train.log, result.json).
  4. test        accuracy of each checkpoint_best.pt (chosen by validation accuracy) on test.tsv

Prints a Markdown table: model, input, seed, validation accuracy at each validation, test accuracy,
training seconds, and the mean +- sd over seeds. --json saves every number. --quick: toy size
(4 speakers x 8 utterances, 2 pre-training and 4 head updates) that checks the machinery in
seconds; its accuracies mean nothing. The work is done by
simple_kmeans/recipes/speaker_experiment.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402
from simple_kmeans.recipes import speaker_experiment  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (corpus/, data/, pretrain/, runs/)")
    p.add_argument("--models", default="simple,boss,boss_hubert,boss_hubert_random",
                   help="comma-separated models to train (default: all)")
    p.add_argument("--seeds", default="1", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--max-update", type=int, default=600, help="updates per head (default: %(default)s)")
    p.add_argument("--pretrain-updates", type=int, default=1500,
                   help="HuBERT pre-training updates (default: %(default)s)")
    p.add_argument("--n-speakers", type=int, default=20, help="speakers in the corpus (default: %(default)s)")
    p.add_argument("--utts-per-speaker", type=int, default=20, help="utterances per speaker (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per training run (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="head trainings at a time (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="toy size: checks the machinery in seconds")
    p.add_argument("--json", dest="json_path", default=None, help="write every number to this JSON file")
    p.add_argument("--force", action="store_true", help="redo the pre-training and every head")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(speaker_experiment.main, get_parser(), argv)


if __name__ == "__main__":
    cli()
