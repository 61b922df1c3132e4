"""Usage: python -m benchmarks.bench_km_label [--quick] [--cases mfcc,hubert] [--threads N] [--workdir DIR]

Label dumping side by side in one run on CPU: fairseq's ``dump_km_label.dump_label`` (numpy
``ApplyKmeans`` called once per utterance) against our ``dump_km_label.main`` (torch, big chunks of
the memory-mapped shard), on the synthetic shards of bench_kmeans.py:

  mfcc    K=100, 1M x 39 frames        (--quick: 200k)
  hubert  K=500, 200k x 768 frames     (--quick: 50k)

Centroids are random frames of the shard (labelling cost does not depend on their quality).
Prints wall time, frames/s, our speed-up, and how many labels differ from fairseq's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # fairseq's per-utterance progress bar
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_kmeans import CASES, write_case  # noqa: E402
from fairseq_ext.base.cli import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--cases", default="mfcc,hubert")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (default: all cores)")
    p.add_argument("--workdir", default=None, help="keep/reuse generated shards here")
    return p


def main(argv=None) -> None:
    import joblib
    import torch
    from threadpoolctl import threadpool_limits

    from benchmarks.reference import fairseq_example
    from simple_kmeans import dump_km_label
    from fairseq_ext.kmeans.backends import centers_to_estimator

    args = get_parser().parse_args(argv)
    setup_logging("WARNING")
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    ref = fairseq_example("simple_kmeans/dump_km_label.py")
    tmp = tempfile.TemporaryDirectory()
    workdir = Path(args.workdir) if args.workdir else Path(tmp.name)
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    print(f"{'case':8} {'frames x dim':>14} {'K':>4} {'fairseq s':>10} {'ours s':>8} {'fairseq fr/s':>13} "
          f"{'ours fr/s':>11} {'speed-up':>9} {'labels differing':>17}")
    for case in args.cases.split(","):
        full, quick, dim, k, _ = CASES[case]
        n = quick if args.quick else full
        feat_dir = write_case(workdir, case, n, args.seed)
        feats = np.load(feat_dir / "train_0_1.npy", mmap_mode="r")
        rng = np.random.default_rng(args.seed)
        centers = np.asarray(feats[np.sort(rng.choice(n, k, replace=False))], dtype=np.float32)
        out = Path(tmp.name) / case
        km_path = out / "km.bin"
        out.mkdir(parents=True, exist_ok=True)
        joblib.dump(centers_to_estimator(centers), km_path)
        start = time.perf_counter()
        ref.dump_label(str(feat_dir), "train", str(km_path), 1, 0, str(out / "fairseq"))
        t_ref = time.perf_counter() - start
        start = time.perf_counter()
        dump_km_label.main(str(feat_dir), "train", str(km_path), 1, 0, str(out / "ours"), device="cpu")
        t_ours = time.perf_counter() - start
        a = np.array((out / "fairseq" / "train_0_1.km").read_text().split(), dtype=np.int64)
        b = np.array((out / "ours" / "train_0_1.km").read_text().split(), dtype=np.int64)
        same_lines = (out / "fairseq" / "train_0_1.km").read_text().count("\n") == \
            (out / "ours" / "train_0_1.km").read_text().count("\n")
        diff = int((a != b).sum()) if len(a) == len(b) and same_lines else -1
        print(f"{case:8} {f'{n} x {dim}':>14} {k:4d} {t_ref:10.1f} {t_ours:8.1f} {n / t_ref:13.0f} "
              f"{n / t_ours:11.0f} {t_ref / t_ours:8.1f}x {diff:17d}", flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
