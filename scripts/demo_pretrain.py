"""Usage: python scripts/demo_pretrain.py DEMO_DIR [--max-update 3000] [--adv-weight W] [--threads N]
                                    [--n-clusters 50] [--force]

The main job after the labels: pre-train a small disentangled HuBERT (config/pretrain/dhubert_tiny:
frame-level speaker adversary with the confusion loss, speaker-conditioned prediction, pitch head) on
CPU and probe what its layers keep. DEMO_DIR is the output folder of the label pipeline's demo:

    python -m simple_kmeans.pipeline --demo DEMO_DIR        # (fairseq-ext-labels --demo DEMO_DIR)
    python scripts/demo_pretrain.py DEMO_DIR

Inputs (written by the label pipeline):
  DEMO_DIR/manifest/{train,valid}.tsv   fairseq manifests
  DEMO_DIR/labels/{train,valid}.km      k-means labels (MFCC: 100 Hz, HuBERT features: 50 Hz,
  DEMO_DIR/labels/dict.km.txt           the rate is read off the label lengths)
  DEMO_DIR/corpus/speakers.tsv          uid<TAB>speaker (and corpus/phones.tsv for PNMI)

Steps (outputs under DEMO_DIR/dhubert/):
  1. speakers  speakers/{train,valid}.spk + dict.spk.txt       (simple_kmeans/speaker_labels.py)
  2. pitch     pitch/{split}_0_1.npy/.len at 100 Hz + train.pitch_stats.json
                                                 (simple_kmeans/dump_pitch_feature.py, pitch_stats.py)
  3. train     fairseq-hydra-train --config-name dhubert_tiny for --max-update updates on CPU, adversary
               weight from the config or --adv-weight (ramped over the first quarter of the run);
               run dir DEMO_DIR/dhubert/run (checkpoints/, train.log)
  4. probe     per layer: speaker-ID accuracy of a linear probe on mean-pooled features and PNMI of
               k-means codes against the corpus phones, on the training manifest (fairseq_ext/probe.py);
               probe.json
Then prints the report: the last validation (masked-prediction accuracy, adversary accuracy,
pitch error) and the probe table.

The work is done by simple_kmeans/recipes/demo.py (training: fairseq_ext/train_run.py).
Reruns skip what is done: a step whose inputs and settings are unchanged (stamps in
DEMO_DIR/dhubert/.stamps) is not redone; training is skipped when checkpoint_last.pt already
holds --max-update updates and resumes from it when it holds fewer. A checkpoint trained on other
inputs or settings stops the run with a message (--force starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402
from simple_kmeans.recipes import demo  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", help="output folder of `python -m simple_kmeans.pipeline --demo DEMO_DIR`")
    parser.add_argument("--max-update", type=int, default=3000, help="training updates (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the training process (default: inherited)")
    parser.add_argument("--n-clusters", type=int, default=50, help="k-means clusters of the PNMI probe")
    parser.add_argument("--adv-weight", "--grl-lambda-max", dest="adv_weight", type=float, default=None,
                        help="final adversary weight, model.adv_weight (default: config/pretrain/dhubert_tiny.yaml's, "
                             "the value docs/dhubert.md's experiment favours); --grl-lambda-max is its old name")
    parser.add_argument("--force", action="store_true", help="redo every step (removes the previous run)")
    return parser


def cli(argv=None) -> None:
    run_cli(demo.main, get_parser(), argv)


if __name__ == "__main__":
    cli()
