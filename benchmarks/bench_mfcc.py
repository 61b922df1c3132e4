"""Usage: python -m benchmarks.bench_mfcc [--quick] [--repeats 3] [--workdir DIR] [--offline]

MFCC shard dumping side by side in one run, one thread each (OMP_NUM_THREADS=1,
torch.set_num_threads(1)): end-to-end dump of the same manifest (read audio, 39-D features,
write .npy/.len) by

  ours       simple_kmeans.dump_mfcc_feature.main (vectorised Kaldi MFCC, streamed .npy)
  fairseq    fairseq's own examples/hubert/simple_kmeans/dump_mfcc_feature.main, unmodified,
             running torchaudio's kaldi.mfcc + compute_deltas loaded by
             benchmarks/torchaudio_reference.py (torchaudio cannot be installed here) and a
             minimal stand-in for npy_append_array.NpyAppendArray (append + header rewrite)

on two seeded synthetic corpora (simple_kmeans.make_demo_corpus): "short" utterances as
generated (~1-2 s each) and "long" ones (demo utterances concatenated to ~15 s, LibriSpeech-like),
each manifest listing its files repeatedly up to 900 s of audio (files read from the page cache).
Prints throughput (seconds of audio per second, "x real time", best of --repeats) and the
ratio ours / fairseq, then checks that both outputs agree (same .len, max abs difference of the
.npy). A features-only table (no I/O) adds kaldi-native-fbank's own frame-by-frame
``OnlineMfcc`` for comparison. Target: ratio >= 1 (at least the reference's throughput per core).
--quick: 120 s of audio per manifest, 2 repeats.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy / torch are imported
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fairseq_ext.base.cli import setup_logging  # noqa: E402

logger = logging.getLogger("bench_mfcc")


class _NpyAppendArray:
    """Stand-in for ``npy_append_array.NpyAppendArray`` (not installed): append rows, rewrite header."""

    HEADER_LEN = 128

    def __init__(self, filename: str):
        self._f = open(filename, "wb")
        self._rows = 0
        self._dim = None
        self._dtype = None
        self._f.write(b"\0" * self.HEADER_LEN)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        self._dim, self._dtype = arr.shape[1], arr.dtype
        self._f.write(arr.tobytes())
        self._rows += arr.shape[0]
        d = repr({"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False,
                  "shape": (self._rows, self._dim)}).encode("latin1")
        d = d + b" " * (self.HEADER_LEN - 10 - len(d) - 1) + b"\n"
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d)
        self._f.seek(0, 2)
        self._f.flush()


def make_corpora(workdir: Path, quick: bool) -> dict:
    """Write the short and long corpora with their manifests; returns {name: (tsv_dir, audio seconds)}."""
    import soundfile as sf

    from simple_kmeans import make_demo_corpus

    n_spk, n_utt = (4, 6) if quick else (6, 20)
    demo = workdir / "demo"
    if not (demo / "speakers.tsv").exists():
        make_demo_corpus.main(str(demo), n_speakers=n_spk, utts_per_speaker=n_utt, seed=0)
    wavs = sorted((demo / "wav").rglob("*.wav"))
    long_dir = workdir / "long_wav"
    long_dir.mkdir(exist_ok=True)
    buf, k = [], 0
    for i, p in enumerate(wavs):
        buf.append(sf.read(p, dtype="int16")[0])
        if sum(map(len, buf)) >= 15 * 16000 or i == len(wavs) - 1:
            sf.write(long_dir / f"long_{k:03d}.wav", np.concatenate(buf), 16000, subtype="PCM_16")
            buf, k = [], k + 1
    target = 120 if quick else 900  # seconds of audio per manifest: files are listed repeatedly
    out = {}
    for name, root in (("short", demo / "wav"), ("long", long_dir)):
        files = [(p.resolve().relative_to(root.resolve()), sf.info(str(p)).frames)
                 for p in sorted(root.rglob("*.wav"))]
        tsv_dir = workdir / f"manifest_{name}"
        tsv_dir.mkdir(exist_ok=True)
        n_total = n_utts = 0
        with open(tsv_dir / "train.tsv", "w") as f:
            f.write(f"{root.resolve()}\n")
            while n_total < target * 16000:
                for rel, n in files:
                    f.write(f"{rel}\t{n}\n")
                    n_total += n
                    n_utts += 1
        out[name] = (tsv_dir, n_total / 16000, n_utts)
    return out


def load_fairseq_dump(offline: bool):
    """fairseq's dump_mfcc_feature module, imported with the torchaudio stub and the NpyAppendArray stand-in."""
    from benchmarks.reference import fairseq_example
    from benchmarks.torchaudio_reference import install_stub

    if "npy_append_array" not in sys.modules:
        stub = types.ModuleType("npy_append_array")
        stub.NpyAppendArray = _NpyAppendArray
        sys.modules["npy_append_array"] = stub
    with install_stub(offline=offline):
        return fairseq_example("simple_kmeans/dump_mfcc_feature.py")


def time_dump(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def features_only(wavs, repeats: int, offline: bool) -> dict:
    """Seconds per method to featurise in-memory waveforms (no I/O)."""
    import kaldi_native_fbank as knf

    from benchmarks.torchaudio_reference import reference_mfcc_features
    from simple_kmeans.mfcc import add_deltas, get_extractor, mfcc_features

    opts = get_extractor(16000).knf_options

    def knf_online(w):
        m = knf.OnlineMfcc(opts)
        m.accept_waveform(16000, w)
        m.input_finished()
        return add_deltas(np.stack([m.get_frame(i) for i in range(m.num_frames_ready)]))

    methods = {
        "ours (vectorised, knf filterbank)": mfcc_features,
        "torchaudio kaldi (fairseq)": lambda w: reference_mfcc_features(w, 16000, offline=offline),
        "knf.OnlineMfcc frame by frame": knf_online,
    }
    best = {name: float("inf") for name in methods}
    for _ in range(repeats):
        for name, f in methods.items():
            best[name] = min(best[name], time_dump(lambda f=f: [f(w) for w in wavs], 1))
    return best


def main(quick: bool = False, repeats: int = 3, workdir: str | None = None, offline: bool = False) -> None:
    import soundfile as sf
    import torch

    torch.set_num_threads(1)
    from simple_kmeans import dump_mfcc_feature

    repeats = 2 if quick and repeats == 3 else repeats
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_mfcc_")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpora = make_corpora(work, quick)
    ref = load_fairseq_dump(offline)
    from benchmarks.torchaudio_reference import install_stub

    print(f"one thread each, best of {repeats}; x real time = seconds of audio per second of wall time")
    print(f"{'corpus':<8}{'utts':>6}{'audio s':>9}{'ours xRT':>11}{'fairseq xRT':>13}{'ratio':>8}"
          f"{'max|diff|':>11}")
    for name, (tsv_dir, seconds, n_utts) in corpora.items():
        ours_dir, ref_dir = work / f"feat_ours_{name}", work / f"feat_ref_{name}"
        t_ours = t_ref = float("inf")
        for _ in range(repeats):  # interleaved, so that load changes hit both alike
            t_ours = min(t_ours, time_dump(
                lambda: dump_mfcc_feature.main(str(tsv_dir), "train", 1, 0, str(ours_dir)), 1))
            with install_stub(offline=offline):  # fairseq's get_waveform imports torchaudio.sox_effects
                t_ref = min(t_ref, time_dump(lambda: ref.main(str(tsv_dir), "train", 1, 0, str(ref_dir), 16000), 1))
        a, b = np.load(ours_dir / "train_0_1.npy"), np.load(ref_dir / "train_0_1.npy")
        la = (ours_dir / "train_0_1.len").read_text().split()
        lb = (ref_dir / "train_0_1.len").read_text().split()
        if la != lb or a.shape != b.shape:
            raise SystemExit(f"{name}: outputs differ in layout: {a.shape} vs {b.shape}")
        print(f"{name:<8}{n_utts:>6}{seconds:>9.1f}{seconds / t_ours:>11.0f}{seconds / t_ref:>13.0f}"
              f"{t_ref / t_ours:>8.2f}{float(np.abs(a - b).max()):>11.2e}")

    tsv_dir = corpora["long"][0]
    root = Path((tsv_dir / "train.tsv").read_text().splitlines()[0])
    wavs = [sf.read(p, dtype="float32")[0] for p in sorted(root.glob("*.wav"))]
    wavs = wavs * math.ceil(60 * 16000 / sum(map(len, wavs)))  # >= 60 s
    seconds = sum(map(len, wavs)) / 16000
    print(f"\nfeatures only (no I/O), long corpus, {seconds:.0f} s of audio:")
    for method, t in features_only(wavs, repeats, offline).items():
        print(f"  {method:<36}{seconds / t:>8.0f}x real time")
    if tmp is not None:
        tmp.cleanup()


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpora, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept")
    parser.add_argument("--workdir", default=None, help="keep corpora and outputs here (default: temp dir)")
    parser.add_argument("--offline", action="store_true",
                        help="use the cached torchaudio sources only (no pip download)")
    return parser


if __name__ == "__main__":
    setup_logging("WARNING")
    main(**vars(get_parser().parse_args()))
