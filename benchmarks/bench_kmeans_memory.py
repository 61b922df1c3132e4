"""Usage: python -m benchmarks.bench_kmeans_memory [--quick] [--sizes N1 N2 ...] [--dim 39] [--k 100]
           [--nshard 4] [--threads 1] [--configs all,percent,capped,stream] [--workdir DIR] [--keep]

Peak memory of the k-means step (``learn_kmeans.py``) at two data sizes, side by side in one run.

For each size (default 1M and 4M frames x 39 dims; --quick: 200k and 800k) the script writes
seeded memory-mapped feature shards (a Gaussian mixture of 2K components, utterances of ~300
frames; --nshard shards written in blocks, never held in memory) and runs ``learn_kmeans.py`` on
them, each in its own subprocess, in these configurations:

  all      --backend faiss                      every frame loaded (fairseq's behaviour)
  percent  --backend faiss --percent 0.25       a quarter of the utterances loaded
  capped   --backend faiss --max-memory 0.05    at most 0.05 GiB of sampled frames loaded
  stream   --backend sklearn --stream           nothing loaded: mini-batches streamed over all frames

Printed per run: frames trained on, peak RSS of the child (``os.wait4``'s ``ru_maxrss``; the
shards are written by another subprocess so that this process stays small, see
:func:`write_shards_in_child`), the peak learn_kmeans reports itself ("self"), fit time
(learn_kmeans' own log line), wall time and inertia per frame (over the frames trained on). Then, per configuration, the ratio of peak RSS at the large
size to the small one: about size ratio for ``all`` and ``percent``, about 1 for ``capped`` and
``stream``, whose memory does not grow with the data.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fairseq_ext.base.atomic import NpyStreamWriter, atomic_output  # noqa: E402
from fairseq_ext.base.cli import setup_logging  # noqa: E402

logger = logging.getLogger("bench_kmeans_memory")

CONFIGS = {
    "all": ["--backend", "faiss"],
    "percent": ["--backend", "faiss", "--percent", "0.25"],
    "capped": ["--backend", "faiss", "--max-memory", "0.05"],
    "stream": ["--backend", "sklearn", "--stream"],
}
FIT_RE = re.compile(r"k-means \(K=\d+\) (?:fitted )?on (\d+) frames in ([\d.]+) s")
SELF_PEAK_RE = re.compile(r"peak memory: ([\d.]+) MiB")
INERTIA_RE = re.compile(r"inertia per frame: ([\d.eE+-]+)")


def write_shards(feat_dir: Path, n_frames: int, dim: int, n_clusters: int, nshard: int, seed: int = 0,
                 block: int = 100_000) -> None:
    """``train_{rank}_{nshard}.npy/.len``: ``n_frames`` (dim) frames of a 2K-component Gaussian mixture."""
    rng = np.random.default_rng(seed)
    means = (rng.standard_normal((2 * n_clusters, dim)) * 3).astype(np.float32)
    bounds = np.linspace(0, n_frames, nshard + 1).round().astype(int)
    for rank in range(nshard):
        total = int(bounds[rank + 1] - bounds[rank])
        lens = []
        while sum(lens) < total:
            lens.append(int(rng.integers(150, 450)))
        lens[-1] -= sum(lens) - total
        lens = [n for n in lens if n > 0]
        with NpyStreamWriter(feat_dir / f"train_{rank}_{nshard}.npy", dim) as w:
            for s in range(0, total, block):
                n = min(block, total - s)
                x = means[rng.integers(len(means), size=n)] + rng.standard_normal((n, dim), dtype=np.float32)
                w.append(x)
        with atomic_output(feat_dir / f"train_{rank}_{nshard}.len") as f:
            f.writelines(f"{n}\n" for n in lens)


def write_shards_in_child(feat_dir: Path, n_frames: int, dim: int, n_clusters: int, nshard: int) -> None:
    """:func:`write_shards` in a subprocess, so that this process stays small.

    Linux carries the resident memory of the forking process into a child's ``ru_maxrss``
    (the high-water mark of the address space it replaces at ``exec``): a parent that had
    generated large arrays would inflate every child's measured peak.
    """
    code = ("import sys; from pathlib import Path; from benchmarks.bench_kmeans_memory import write_shards; "
            f"write_shards(Path(sys.argv[1]), {n_frames}, {dim}, {n_clusters}, {nshard})")
    subprocess.run([sys.executable, "-c", code, str(feat_dir)], cwd=REPO, check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))


def run_learn_kmeans(feat_dir: Path, nshard: int, k: int, extra: List[str], threads: int) -> Dict[str, float]:
    """Run learn_kmeans in a child process; its peak RSS from ``os.wait4``, fit time and inertia from its log."""
    km = feat_dir / "km.bin"
    cmd = [sys.executable, "-m", "simple_kmeans.learn_kmeans", str(feat_dir), "train", str(nshard), str(km), str(k),
           "--threads", str(threads), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err.seek(0)
        log = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-3000:]}")
    fit, inertia, self_peak = FIT_RE.search(log), INERTIA_RE.search(log), SELF_PEAK_RE.search(log)
    return {"frames": int(fit.group(1)), "fit_s": float(fit.group(2)), "wall_s": wall,
            "peak_mib": usage.ru_maxrss / 1024.0, "self_mib": float(self_peak.group(1)),
            "inertia": float(inertia.group(1))}


def main(quick: bool = False, sizes: List[int] = None, dim: int = 39, k: int = 100, nshard: int = 4,
         threads: int = 1, configs: str = "all,percent,capped,stream", workdir: str = None,
         keep: bool = False) -> Dict[str, Dict[int, Dict[str, float]]]:
    sizes = sizes or ([200_000, 800_000] if quick else [1_000_000, 4_000_000])
    names = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown --configs {sorted(unknown)}; choose from {list(CONFIGS)}")
    root = Path(workdir or tempfile.mkdtemp(prefix="bench_kmeans_memory_"))
    results: Dict[str, Dict[int, Dict[str, float]]] = {c: {} for c in names}
    try:
        for size in sizes:
            feat_dir = root / f"feat_{size}"
            feat_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            write_shards_in_child(feat_dir, size, dim, k, nshard)
            logger.info("wrote %d x %d frames (%.0f MiB) in %.1f s", size, dim, size * dim * 4 / 2**20,
                        time.perf_counter() - start)
            for name in names:
                results[name][size] = r = run_learn_kmeans(feat_dir, nshard, k, CONFIGS[name], threads)
                logger.info("%s %d: %s", name, size, r)
            if not keep:
                shutil.rmtree(feat_dir)
    finally:
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"learn_kmeans peak memory, K={k}, dim {dim}, {nshard} shards, {threads} thread(s)")
    print(f"{'config':<8} {'data frames':>12} {'data MiB':>9} {'trained on':>11} {'peak RSS MiB':>13} "
          f"{'(self)':>7} {'fit s':>7} {'wall s':>7} {'inertia/frame':>14}")
    for name in names:
        for size in sizes:
            r = results[name][size]
            print(f"{name:<8} {size:>12,} {size * dim * 4 / 2**20:>9.0f} {r['frames']:>11,} {r['peak_mib']:>13.0f} "
                  f"{r['self_mib']:>7.0f} {r['fit_s']:>7.1f} {r['wall_s']:>7.1f} {r['inertia']:>14.3f}")
    lo, hi = sizes[0], sizes[-1]
    print(f"peak RSS ratio {hi:,} / {lo:,} frames (data x{hi / lo:.1f}): "
          + ", ".join(f"{n} {results[n][hi]['peak_mib'] / results[n][lo]['peak_mib']:.2f}" for n in names))
    return results


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200k and 800k frames")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="frame counts (default 1M 4M)")
    p.add_argument("--dim", type=int, default=39)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--nshard", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", default="all,percent,capped,stream", help=f"comma-separated of {list(CONFIGS)}")
    p.add_argument("--workdir", default=None, help="where the shards are written (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the shards")
    return p


if __name__ == "__main__":
    setup_logging()
    main(**vars(get_parser().parse_args()))
