"""Usage: python benchmarks/bench_hubert_feature.py [--quick] [--utts 16] [--layer 6] [--repeats 2]
              [--batch-seconds 60] [--threads N] [--workdir DIR]

HuBERT layer-feature dumping on CPU: ours (simple_kmeans/dump_hubert_feature.py, batched,
padding-exact) against fairseq's per-utterance ``HubertFeatureReader`` (examples/hubert/
simple_kmeans/dump_hubert_feature.py), same randomly initialised HuBERT Base-sized checkpoint
(--quick: a 4-layer 256-dim model and fewer, shorter utterances), same audio, same layer.

Prints the seconds of each (best of --repeats, alternating), the throughput ratio
fairseq_time / ours_time (> 1: ours is faster) and the largest absolute feature difference.
Model loading is excluded from both timings; ours includes reading audio and writing the
.npy/.len files, fairseq's includes reading audio and collecting the features in memory.

fairseq's reader hard-codes ``.cuda()`` and reads audio through torchaudio (not installed here);
:func:`fairseq_hubert_reader` runs it on the CPU with soundfile, its computation unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench_hubert_feature")


@contextlib.contextmanager
def _cuda_means_cpu() -> Iterator[None]:
    """Make ``.cuda()`` on tensors and modules a no-op (for reference code that hard-codes it)."""
    import torch

    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


def _stub_npy_append_array() -> None:
    """fairseq's feature_utils imports ``NpyAppendArray`` (unused by the reader); stub it if absent."""
    import importlib.util
    import types

    if "npy_append_array" in sys.modules or importlib.util.find_spec("npy_append_array"):
        return
    stub = types.ModuleType("npy_append_array")

    class NpyAppendArray:  # noqa: D401
        def __init__(self, *args, **kwargs):
            raise RuntimeError("npy_append_array is not installed (stub)")

    stub.NpyAppendArray = NpyAppendArray
    sys.modules["npy_append_array"] = stub


class fairseq_hubert_reader:
    """fairseq's ``HubertFeatureReader`` on the CPU: ``get_feats(path, ref_len) -> (T, C)`` tensor."""

    def __init__(self, ckpt_path: str, layer: int, max_chunk: int = 1600000):
        import soundfile as sf

        import fairseq_ext  # noqa: F401  (allow-lists Dictionary for fairseq's torch.load)
        from benchmarks.reference import fairseq_example

        _stub_npy_append_array()
        module = fairseq_example("simple_kmeans/dump_hubert_feature.py",
                                 stub_modules=("npy_append_array",))

        def read_wave(path, need_waveform=True, use_sample_rate=None):
            wav, sr = sf.read(path, dtype="float32")
            assert use_sample_rate is None or sr == use_sample_rate, (path, sr)
            return wav

        module.get_features_or_waveform = read_wave  # instead of torchaudio-based loading
        with _cuda_means_cpu():
            self.reader = module.HubertFeatureReader(ckpt_path, layer, max_chunk)

    def get_feats(self, path: str, ref_len=None):
        with _cuda_means_cpu():
            return self.reader.get_feats(path, ref_len)


def make_audio(folder: Path, n_utts: int, min_s: float, max_s: float, seed: int = 0) -> Path:
    """Write ``n_utts`` noisy-harmonic wavs of random lengths and a manifest ``train.tsv``."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    wav_dir = folder / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines = [str(wav_dir)]
    for i in range(n_utts):
        n = int(rng.uniform(min_s, max_s) * 16000)
        t = np.arange(n) / 16000
        f0 = rng.uniform(90, 250)
        wav = 0.1 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(t))) + 0.02 * rng.standard_normal(n)
        sf.write(wav_dir / f"u{i:03d}.wav", wav.astype(np.float32), 16000, subtype="PCM_16")
        lines.append(f"u{i:03d}.wav\t{n}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


def run_ours(feature, tsv_dir: Path, out_dir: Path) -> Tuple[float, np.ndarray]:
    """Our shard loop (simple_kmeans/shard_dump.py) with ``feature`` (a ``HubertLayerFeature``)."""
    from simple_kmeans.shard_dump import dump_shard, plan_shard

    start = time.perf_counter()
    job = plan_shard(str(tsv_dir), "train", 1, 0, str(out_dir))
    job.begin()
    dump_shard(job, feature)
    return time.perf_counter() - start, np.load(out_dir / "train_0_1.npy")


def run_fairseq(reader: fairseq_hubert_reader, tsv_dir: Path) -> Tuple[float, np.ndarray]:
    lines = (tsv_dir / "train.tsv").read_text().splitlines()
    root, rows = lines[0], [line.split("\t") for line in lines[1:]]
    start = time.perf_counter()
    feats: List[np.ndarray] = [reader.get_feats(f"{root}/{rel}", int(n)).cpu().numpy()
                               for rel, n in rows]
    out = np.concatenate(feats)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, few short utterances")
    parser.add_argument("--utts", type=int, default=None, help="utterances (default 16, quick 8)")
    parser.add_argument("--layer", type=int, default=None, help="layer (default 6, quick 3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    from fairseq_ext.base.cli import setup_logging
    from fairseq_ext.encoder import load_upstream
    from simple_kmeans.dump_hubert_feature import HubertLayerFeature
    from fairseq_ext.tiny_checkpoint import BASE_SIZE, make_tiny_hubert_checkpoint

    setup_logging("WARNING")
    if args.threads:
        torch.set_num_threads(args.threads)
    n_utts = args.utts or (8 if args.quick else 16)
    layer = args.layer or (3 if args.quick else 6)
    size = (dict(encoder_layers=4, embed_dim=256, ffn_dim=1024, heads=4, final_dim=64,
                 conv_pos=32, conv_pos_groups=8) if args.quick else BASE_SIZE)
    min_s, max_s = (1.0, 4.0) if args.quick else (2.0, 15.0)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = make_tiny_hubert_checkpoint(work / "hubert.pt", label_rate=50, num_classes=100,
                                           **size)
        make_audio(work, n_utts, min_s, max_s)
        seconds = sum(int(line.split("\t")[1]) for line in
                      (work / "train.tsv").read_text().splitlines()[1:]) / 16000
        feature = HubertLayerFeature(load_upstream(str(ckpt)), layer, batch_seconds=args.batch_seconds)
        ref_reader = fairseq_hubert_reader(str(ckpt), layer)
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t, ours = run_ours(feature, work, work)
            t_ours.append(t)
            t, ref = run_fairseq(ref_reader, work)
            t_ref.append(t)
    diff = float(np.abs(ours - ref).max()) if ours.shape == ref.shape else float("nan")
    print(f"device: cpu ({torch.get_num_threads()} torch threads; no GPU in this run)")
    print(f"model: {'quick 4x256' if args.quick else 'HuBERT Base size (12x768)'}, layer {layer}; "
          f"{n_utts} utterances, {seconds:.1f} s of audio; frames {ours.shape} vs {ref.shape}")
    print(f"ours    (batched, --batch-seconds {args.batch_seconds:g}): {min(t_ours):7.2f} s  "
          f"({seconds / min(t_ours):6.1f}x real time)")
    print(f"fairseq (per utterance)             : {min(t_ref):7.2f} s  "
          f"({seconds / min(t_ref):6.1f}x real time)")
    print(f"throughput ratio ours/fairseq: {min(t_ref) / min(t_ours):.2f}x   max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
