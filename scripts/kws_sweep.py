"""Usage: python scripts/kws_sweep.py OUT_DIR [--settings A,B,C,D] [--n-mels 10,40] [--seeds 1,2]
                             [--max-update 500] [--config small] [--run-set KEY=VALUE ...]
                             [--voices 128] [--threads 1] [--jobs 1] [--quick] [--json RESULTS.json] [--force]

The trainable front-end sweep of "Understanding Audio Features via Trainable Basis Functions"
(settings A: nothing trainable, B: Mel basis, C: STFT basis, D: both; docs/speaker.md) on a
generated keyword set, with the real trainer. One command reproduces everything; reruns skip
finished runs.

  1. corpus   OUT_DIR/corpus: simple_kmeans/recipes/kws_corpus.py (10 keywords in confusable groups, --voices
              generated voices x 2 takes, pitch/tempo/noise variation; 16 validation and 16 test
              voices that never occur in training)
  2. training for every (setting, n_mels, seed): fairseq-hydra-train --config-dir config/kws
              --config-name CONFIG (default small.yaml: 1 padding-safe Conformer layer x 32, batch 32) with
              model.trainable_stft / model.trainable_mel / model.n_mels / common.seed, the same
              updates, batches and learning rate for all; 4 validations per run, checkpoint_best.pt
              chosen by validation accuracy. Run dirs OUT_DIR/runs/{setting}_m{n_mels}_s{seed}
              (train.log, result.json; resumed or started
              over by fairseq_ext/train_run.py); --run-set overrides apply to every run (and change the run
              dirs' names).
  3. test     accuracy of each checkpoint_best.pt on testing_list.txt (unseen voices)

Prints a Markdown table (setting, n_mels, seed, best / final validation accuracy, test accuracy,
training seconds) and the mean +- sd over seeds per (setting, n_mels). --json saves every
number. --quick: a toy size (3 keywords, 6 voices, tiny config, 4 updates) that checks the
machinery in seconds (pick few runs, e.g. --settings A,D --n-mels 10 --seeds 1); its accuracies
mean nothing. The work is done by simple_kmeans/recipes/kws_sweep.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402
from simple_kmeans.recipes import kws_sweep  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (corpus/, runs/)")
    p.add_argument("--settings", default="A,B,C,D", help="front-end settings to run (default: %(default)s)")
    p.add_argument("--n-mels", default="10,40", help="comma-separated Mel bin counts (default: %(default)s)")
    p.add_argument("--seeds", default="1,2", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--max-update", type=int, default=500, help="updates per run (default: %(default)s)")
    p.add_argument("--config", default="small", help="config/kws/CONFIG.yaml (default: %(default)s)")
    p.add_argument("--run-set", action="append", default=None, metavar="KEY=VALUE",
                   help="hydra override for every run (repeatable), e.g. model.mel_init=random")
    p.add_argument("--voices", type=int, default=128, help="generated voices in the corpus (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per training run (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="toy size (3 keywords, 6 voices): checks the machinery")
    p.add_argument("--json", dest="json_path", default=None, help="write every number to this JSON file")
    p.add_argument("--force", action="store_true", help="retrain runs that are already done")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(kws_sweep.main, get_parser(), argv)


if __name__ == "__main__":
    cli()
