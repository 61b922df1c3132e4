"""Usage: python scripts/dhubert_experiment.py OUT_DIR [--max-update 1500] [--seeds 1] [--n-speakers 8]
              [--utts-per-speaker 48] [--heldout-per-speaker 24] [--n-clusters 100]
              [--common-set KEY=VALUE ...] [--dhubert-set KEY=VALUE ...] [--threads 1] [--json RESULTS.json]

Does the speaker adversary remove speaker identity, at what cost to masked prediction? Plain HuBERT
and disentangled HuBERT, trained with the same compute on a generated multi-speaker corpus, then
probed on held-out utterances. One command reproduces everything (reruns skip finished steps):

  1. corpus     OUT_DIR/corpus: simple_kmeans.make_demo_corpus, --n-speakers x --utts-per-speaker
                utterances (speaker F0, formants, tilt, loudness; random per-utterance pitch shifts)
  2. manifests  OUT_DIR/manifest/train.tsv (the first utterances of each speaker) and valid.tsv (the
                last --heldout-per-speaker of each speaker: fairseq's validation set and the probe set)
  3. labels     MFCC -> k-means (faiss, --n-clusters) -> labels at 100 Hz by the label pipeline
                (simple_kmeans.pipeline, one shard) in OUT_DIR/labels (labels in OUT_DIR/labels/labels)
  4. speakers, pitch (100 Hz for training, 50 Hz on the model's frame grid for the pitch probe)
  5. training   config/pretrain/dhubert_tiny (2 layers x 64, CPU), identical sizes, batches, updates,
                learning rate and seed for both variants:
                  plain    task without speakers/pitch, model heads off (spk_layer=0 pitch_layer=0),
                           criterion hubert_summable: HuBERT's loss
                  dhubert  speaker adversary (GRL) at model.spk_layer + auxiliary pitch head,
                           config defaults plus --dhubert-set overrides
                --common-set overrides apply to both. Run dirs OUT_DIR/runs/{variant}[_{hash}]_s{seed}
                (a hash of the --dhubert-set and of non-default --max-update/--common-set values).
  6. evaluation on the held-out utterances, every layer (0 = transformer input):
                spk acc    linear speaker probe (standardised mean-pooled features, logistic
                           regression), half of each speaker's held-out utterances for training, the
                           other half for testing, averaged over 5 splits; chance = 1 / speakers
                PNMI       k-means (--n-clusters) codes of the layer vs the corpus phones
                pitch RMSE ridge regression of speaker-normalised log F0 (z-score) from the frame
                           features on voiced frames, same splits (1.0 = predicting the mean)
                mask acc   masked-prediction accuracy (correct_m / count_m) of the last validation
Prints a Markdown report; --json saves every number. The work is done by
simple_kmeans/recipes/dhubert_experiment.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.cli import run_cli  # noqa: E402
from simple_kmeans.recipes import dhubert_experiment  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (corpus, labels, runs, results)")
    p.add_argument("--max-update", type=int, default=1500, help="updates per training run (default: %(default)s)")
    p.add_argument("--seeds", default="1", help="comma-separated training seeds, one run per variant each")
    p.add_argument("--n-speakers", type=int, default=8)
    p.add_argument("--utts-per-speaker", type=int, default=48)
    p.add_argument("--heldout-per-speaker", type=int, default=24, help="utterances per speaker in valid.tsv")
    p.add_argument("--n-clusters", type=int, default=100, help="k-means clusters of the labels and the PNMI probe")
    p.add_argument("--corpus-seed", type=int, default=0, help="seed of the corpus and of k-means")
    p.add_argument("--common-set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                   help="hydra overrides for both variants (several after one flag, or the flag repeated)")
    p.add_argument("--dhubert-set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                   help="hydra overrides for the dhubert variant only (several after one flag, or the flag "
                        "repeated), e.g. model.adv_weight=2 model.spk_adversary=reverse")
    p.add_argument("--variants", default="plain,dhubert", help="which variants to train and evaluate")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each training (default 1)")
    p.add_argument("--json", dest="json_path", default=None, help="write all results here")
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


def cli(argv=None) -> None:
    run_cli(dhubert_experiment.main, get_parser(), argv)


if __name__ == "__main__":
    cli()
