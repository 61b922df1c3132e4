"""Usage: python -m benchmarks.bench_kmeans [--quick] [--cases mfcc,hubert] [--threads N]
           [--niter N] [--seed-sample N] [--max-points-per-centroid N] [--workdir DIR]
           [--skip-fairseq] [--ours-backend faiss|torch|faiss,torch] [--device auto|cpu|cuda]

k-means side by side in one run: fairseq's learn_kmeans settings (its own ``get_km_model``:
sklearn MiniBatchKMeans, n_init 20, max_iter 100, batch 10000) against our
``learn_kmeans.py --backend faiss`` (k-means++ on a sample + faiss Lloyd), on seeded synthetic
features written as a fairseq feature shard:

  mfcc    K=100 on 1M x 39 MFCC-like frames (13 smoothed cepstra from 200 "phone states" + deltas)
  hubert  K=500 on 200k x 768 HuBERT-like frames (Gaussian mixture of 1000 components on a
          48-dim subspace plus isotropic noise)

Each method runs in its own subprocess (clean peak memory). Reported: fit time (fairseq: the
``fit`` call on the loaded array; ours: the fit inside learn_kmeans.main), our end-to-end time
(memory-mapped sampling, fit, saving, inertia), inertia per frame on the training frames (same
function for both) and peak RSS. Target: time ratio <= 0.5 and inertia at most 0.5% worse.
--quick: 200k MFCC frames (K=100) and 50k HuBERT frames with K=100 (fairseq's 20 k-means++ inits
on 30k frames dominate its time at any size: with K=500 they alone take many minutes on 2 cores).
--ours-backend torch times ``--backend torch`` (on --device, CUDA when available) instead of faiss;
``faiss,torch`` runs both side by side and also prints torch/faiss ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fairseq_ext.base.atomic import NpyStreamWriter, atomic_output  # noqa: E402
from fairseq_ext.base.cli import setup_logging  # noqa: E402

logger = logging.getLogger("bench_kmeans")

CASES = {  # name: (frames, quick frames, dim, K, quick K)
    "mfcc": (1_000_000, 200_000, 39, 100, 100),
    "hubert": (200_000, 50_000, 768, 500, 100),
}


def _utt_lengths(rng: np.random.Generator, n: int, mean: int) -> np.ndarray:
    lens = []
    while sum(lens) < n:
        lens.append(int(rng.integers(mean // 2, mean * 3 // 2)))
    lens[-1] -= sum(lens) - n
    return np.array([x for x in lens if x > 0])


def mfcc_like(n: int, seed: int, chunk: int = 200_000):
    """Yield (T, 39) float32 blocks: smoothed 13-d cepstra from phone-state segments + deltas."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n_states = 200
    scale = np.array([12.0, 9, 7, 6, 5, 4.5, 4, 3.5, 3, 3, 2.5, 2.5, 2])
    means = rng.standard_normal((n_states, 13)) * scale
    weights = rng.dirichlet(np.full(n_states, 1.0))
    done = 0
    while done < n:
        t = min(chunk, n - done)
        seg_len = rng.geometric(1 / 8, size=t // 4 + 10)
        seg_state = rng.choice(n_states, size=len(seg_len), p=weights)
        frames = np.repeat(means[seg_state], seg_len, axis=0)[: t + 4]
        noise = lfilter([1.0], [1.0, -0.7], rng.standard_normal(frames.shape) * scale * 0.35, axis=0)
        static = lfilter([0.5, 0.5], [1.0], frames, axis=0) + noise
        delta = _delta(static)
        ddelta = _delta(delta)
        yield np.concatenate([static, delta, ddelta], axis=1)[2:t + 2].astype(np.float32)
        done += t


def _delta(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((2, 2), (0, 0)), mode="edge")
    return ((p[3:-1] - p[1:-3]) + 2 * (p[4:] - p[:-4])) / 10.0


def hubert_like(n: int, seed: int, dim: int = 768, chunk: int = 50_000):
    """Yield (T, dim) float32 blocks from a 1000-component Gaussian mixture on a 48-d subspace."""
    rng = np.random.default_rng(seed)
    n_comp, rank = 1000, 48
    means = rng.standard_normal((n_comp, rank)).astype(np.float32) * 2.0
    spread = rng.uniform(0.5, 1.5, n_comp).astype(np.float32)
    weights = rng.dirichlet(np.full(n_comp, 2.0))
    proj = (rng.standard_normal((rank, dim)) / np.sqrt(rank)).astype(np.float32)
    done = 0
    while done < n:
        t = min(chunk, n - done)
        comp = rng.choice(n_comp, size=t, p=weights)
        z = means[comp] + rng.standard_normal((t, rank), dtype=np.float32) * spread[comp, None]
        yield z @ proj + 0.4 * rng.standard_normal((t, dim), dtype=np.float32)
        done += t


def write_case(workdir: Path, case: str, n: int, seed: int) -> Path:
    """Write the case as feature shard ``train_0_1.npy/.len`` (reused when already there)."""
    dim = CASES[case][2]
    feat_dir = workdir / f"{case}_{n}_{seed}"
    npy = feat_dir / "train_0_1.npy"
    if npy.is_file() and (feat_dir / "train_0_1.len").is_file():
        return feat_dir
    gen = mfcc_like(n, seed) if case == "mfcc" else hubert_like(n, seed, dim)
    with NpyStreamWriter(npy, dim) as w:
        for block in gen:
            w.append(block)
    lens = _utt_lengths(np.random.default_rng(seed + 1), n, 500 if case == "mfcc" else 250)
    with atomic_output(feat_dir / "train_0_1.len") as f:
        f.write("".join(f"{x}\n" for x in lens))
    return feat_dir


# --------------------------------------------------------------------------- workers


def worker_fairseq(feat_dir: str, k: int, seed: int) -> dict:
    from benchmarks.reference import fairseq_example
    from fairseq_ext.kmeans.backends import inertia

    ref = fairseq_example("simple_kmeans/learn_kmeans.py")
    feat = np.load(os.path.join(feat_dir, "train_0_1.npy"))
    np.random.seed(seed)  # what fairseq's learn_kmeans does
    km = ref.get_km_model(k, "k-means++", 100, 10000, 0.0, 100, 20, 0.0)
    km.verbose = 0  # fairseq prints every mini-batch step; silence only
    start = time.perf_counter()
    km.fit(feat)
    fit_s = time.perf_counter() - start
    return {"fit_s": fit_s, "total_s": None, "inertia": inertia(feat, km.cluster_centers_) / len(feat)}


def worker_ours(feat_dir: str, k: int, seed: int, niter: int, seed_sample: int, mppc: int, threads,
                backend: str = "faiss", device: str = "auto") -> dict:
    from simple_kmeans import learn_kmeans

    extra = {"device": device} if backend == "torch" else {"max_points_per_centroid": mppc}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        s = learn_kmeans.main(feat_dir, "train", 1, os.path.join(tmp, "km.bin"), k, seed=seed,
                              backend=backend, niter=niter, seed_sample=seed_sample, threads=threads, **extra)
        total = time.perf_counter() - start
    return {"fit_s": s.fit_seconds, "total_s": total, "inertia": s.inertia_per_frame}


def run_worker(method: str, feat_dir: Path, k: int, args) -> dict:
    """``method``: fairseq, or one of our backends."""
    worker = "fairseq" if method == "fairseq" else "ours"
    cmd = [sys.executable, "-m", "benchmarks.bench_kmeans", "--worker", worker, "--feat-dir", str(feat_dir),
           "--ours-backend", method if worker == "ours" else "faiss", "--device", args.device,
           "--k", str(k), "--seed", str(args.seed), "--niter", str(args.niter),
           "--seed-sample", str(args.seed_sample), "--max-points-per-centroid", str(args.max_points_per_centroid)]
    env = dict(os.environ)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
        env.update(OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--cases", default="mfcc,hubert")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--niter", type=int, default=None, help="faiss Lloyd iterations (default: ours)")
    p.add_argument("--seed-sample", type=int, default=None, help="k-means++ sample (default: ours)")
    p.add_argument("--max-points-per-centroid", type=int, default=None, help="faiss subsampling (default: ours)")
    p.add_argument("--workdir", default=None, help="keep/reuse generated shards here")
    p.add_argument("--skip-fairseq", action="store_true", help="only run ours (tuning)")
    p.add_argument("--ours-backend", default="faiss",
                   help="our learn_kmeans backend(s) to time: faiss (default), torch, or faiss,torch")
    p.add_argument("--device", default="auto", help="--backend torch: auto, cpu, cuda")
    p.add_argument("--worker", choices=("fairseq", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--feat-dir", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> None:
    from fairseq_ext.kmeans import backends as kmeans_backends

    args = get_parser().parse_args(argv)
    args.niter = args.niter or kmeans_backends.FAISS_NITER
    args.seed_sample = args.seed_sample or kmeans_backends.FAISS_SEED_SAMPLE
    args.max_points_per_centroid = args.max_points_per_centroid or kmeans_backends.FAISS_MAX_POINTS_PER_CENTROID
    setup_logging("WARNING" if args.worker else None)
    if args.worker:
        if args.worker == "fairseq":
            res = worker_fairseq(args.feat_dir, args.k, args.seed)
        else:
            res = worker_ours(args.feat_dir, args.k, args.seed, args.niter, args.seed_sample,
                              args.max_points_per_centroid, args.threads, args.ours_backend, args.device)
        res["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
    else:
        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
    print(f"niter={args.niter} seed_sample={args.seed_sample} max_points_per_centroid="
          f"{args.max_points_per_centroid} threads={args.threads or 'all'} "
          f"cpus={os.cpu_count()}")
    header = f"{'case':8} {'frames x dim':>14} {'K':>4} {'method':8} {'fit s':>8} {'total s':>8} " \
             f"{'inertia/fr':>12} {'peak MiB':>9}"
    print(header)
    summary = []
    for case in args.cases.split(","):
        full, quick, dim, k, quick_k = CASES[case]
        n, k = (quick, quick_k) if args.quick else (full, k)
        feat_dir = write_case(workdir, case, n, args.seed)
        res = {}
        ours = args.ours_backend.split(",")
        for method in ours if args.skip_fairseq else ["fairseq", *ours]:
            r = res[method] = run_worker(method, feat_dir, k, args)
            total = f"{r['total_s']:8.1f}" if r["total_s"] is not None else f"{'-':>8}"
            print(f"{case:8} {f'{n} x {dim}':>14} {k:4d} {method:8} {r['fit_s']:8.1f} {total} "
                  f"{r['inertia']:12.4f} {r['peak_mib']:9.0f}", flush=True)
        pairs = [(m, "fairseq") for m in ours if "fairseq" in res]
        pairs += [("torch", "faiss")] if {"torch", "faiss"} <= set(res) else []
        for a, b in pairs:
            t = res[a]["fit_s"] / res[b]["fit_s"]
            d = res[a]["inertia"] / res[b]["inertia"] - 1
            ok = "OK" if t <= 0.5 and d <= 0.005 else "MISSED"
            e2e = f" (end-to-end: {res[a]['total_s'] / res[b]['fit_s']:.2f})" if b == "fairseq" else ""
            summary.append(f"{case}: time {a}/{b} = {t:.2f}{e2e}, inertia {a} vs {b} = {100 * d:+.2f}%"
                           + (f"  [{ok}: <= 0.5x, <= +0.5%]" if b == "fairseq" else ""))
    for line in summary:
        print(line)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
