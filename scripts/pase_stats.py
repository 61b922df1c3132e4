"""Usage: python scripts/pase_stats.py MANIFEST_DIR OUT_JSON --config config/pretrain/pase.yaml
              [--split train] [--max-chunks 5000] [--batch-size 16] [--seed 0]
              [--set model.workers.lps.n_fft=512 ...]

Compute, once, the per-dimension mean and standard deviation of every PASE regression
worker's target over random training chunks, for ``model.target_stats=OUT_JSON``.

The workers, their options, the chunk size and the sample rate come from the training config
(the same YAML given to fairseq-hydra-train; --set applies the same dotted overrides you pass to
training, e.g. '--set model.workers.fbank={}'). One random chunk is taken from each of at most
--max-chunks utterances of MANIFEST_DIR/SPLIT.tsv; statistics are computed over the valid
frames (padding excluded). Each worker's entry records the options that shape its target:
training refuses a statistics file whose options differ from its config. The output is written
to a temporary name and renamed when complete; rerunning overwrites it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.pase_stats import compute_target_stats  # noqa: E402


def main(manifest_dir: str, out_json: str, config: str, split: str = "train", max_chunks: int = 5000,
         batch_size: int = 16, seed: int = 0, overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Compute and write the statistics, then print one summary line per worker."""
    out = compute_target_stats(manifest_dir, out_json, config, split=split, max_chunks=max_chunks,
                               batch_size=batch_size, seed=seed, overrides=overrides)
    for name, w in out["workers"].items():
        print(f"{name}\tdim={w['dim']}\tmean(mean)={np.mean(w['mean']):.3f}\tmean(std)={np.mean(w['std']):.3f}")
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir", help="folder with SPLIT.tsv")
    parser.add_argument("out_json", help="output statistics file (model.target_stats)")
    parser.add_argument("--config", required=True, help="training config YAML (e.g. config/pretrain/pase.yaml)")
    parser.add_argument("--split", default="train", help="manifest split (default: train)")
    parser.add_argument("--max-chunks", type=int, default=5000, help="utterances sampled, one chunk each")
    parser.add_argument("--batch-size", type=int, default=16, help="chunks per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the utterance sample and chunk offsets")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help="dotted config override, as given to training (repeatable)")
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
