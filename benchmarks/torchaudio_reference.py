"""Usage: python -m benchmarks.torchaudio_reference [--offline] [--verify] [--write-fixture NPZ] [WAV ...]

fairseq's MFCC reference (``torchaudio.compliance.kaldi.mfcc`` + ``compute_deltas``), loaded at run time.

torchaudio cannot be installed next to our torch, but the two pieces fairseq's
``dump_mfcc_feature.py`` uses are pure torch code: ``torchaudio/compliance/kaldi.py`` and
``create_dct`` / ``compute_deltas`` from ``torchaudio/functional/functional.py``. This module
downloads the torchaudio wheel once with ``pip download --no-deps`` into
``~/.cache/fairseq_ext/`` (``$FAIRSEQ_EXT_CACHE`` overrides), extracts those sources there and
executes them against a stub ``torchaudio`` package. Nothing from torchaudio is stored in this
repository, and the stub is only visible to the loaded code (``sys.modules`` is restored).

API:
    reference_mfcc_features(wav, sr) -> (T, 39) float32, exactly fairseq's computation
    load_reference(offline=False) -> stub ``torchaudio`` module (``.compliance.kaldi``, ``.functional``)
    reference_available_offline() -> bool (sources already extracted in the cache)
    install_stub() -> context manager that puts the stub ``torchaudio`` in ``sys.modules``
        (so that fairseq's own ``dump_mfcc_feature.py`` can be imported and run)

Run as a script: prints the cache location and, for each WAV given, the feature shape.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

TORCHAUDIO_VERSION = "2.11.0"
_FUNCTIONAL_NAMES = ("create_dct", "compute_deltas")
_loaded: Optional[types.ModuleType] = None


def cache_dir() -> Path:
    root = os.environ.get("FAIRSEQ_EXT_CACHE") or os.path.join(Path.home(), ".cache", "fairseq_ext")
    return Path(root) / f"torchaudio-{TORCHAUDIO_VERSION}"


def _source_paths() -> tuple[Path, Path]:
    d = cache_dir()
    return d / "kaldi.py", d / "functional_subset.py"


def reference_available_offline() -> bool:
    """True when the extracted reference sources are already in the cache."""
    return all(p.is_file() for p in _source_paths())


def _download_and_extract() -> None:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    wheels = sorted(d.glob(f"torchaudio-{TORCHAUDIO_VERSION}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             f"torchaudio=={TORCHAUDIO_VERSION}", "-d", str(d)],
            check=True,
        )
        wheels = sorted(d.glob(f"torchaudio-{TORCHAUDIO_VERSION}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download did not leave a torchaudio wheel in {d}")
    with zipfile.ZipFile(wheels[0]) as z:
        kaldi_src = z.read("torchaudio/compliance/kaldi.py").decode("utf-8")
        functional_src = z.read("torchaudio/functional/functional.py").decode("utf-8")
    # keep only the two functions fairseq's MFCC path needs from functional.py
    tree = ast.parse(functional_src)
    pieces = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in _FUNCTIONAL_NAMES:
            pieces.append(ast.get_source_segment(functional_src, node))
    if len(pieces) != len(_FUNCTIONAL_NAMES):
        raise RuntimeError(f"could not find {_FUNCTIONAL_NAMES} in torchaudio's functional.py")
    header = "import math\nfrom typing import Optional\nimport torch\nfrom torch import Tensor\n\n\n"
    kaldi_path, functional_path = _source_paths()
    functional_path.write_text(header + "\n\n\n".join(pieces) + "\n", encoding="utf-8")
    kaldi_path.write_text(kaldi_src, encoding="utf-8")


def _exec_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_modules(root: types.ModuleType) -> dict:
    return {
        "torchaudio": root,
        "torchaudio.functional": root.functional,
        "torchaudio.compliance": root.compliance,
        "torchaudio.compliance.kaldi": root.compliance.kaldi,
        # fairseq's get_waveform imports it unconditionally; it is only used for resampling
        "torchaudio.sox_effects": root.sox_effects,
    }


@contextlib.contextmanager
def install_stub(offline: bool = False) -> Iterator[types.ModuleType]:
    """Temporarily make ``import torchaudio`` return the stub (restores ``sys.modules`` on exit)."""
    root = load_reference(offline=offline)
    saved = {k: sys.modules.get(k) for k in _stub_modules(root)}
    sys.modules.update(_stub_modules(root))
    try:
        yield root
    finally:
        _restore_modules(saved)


def _restore_modules(saved: dict) -> None:
    """Put back the ``sys.modules`` entries in ``saved`` (None = the name was absent)."""
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


def load_reference(offline: bool = False) -> types.ModuleType:
    """Return a stub ``torchaudio`` module whose ``compliance.kaldi`` and ``functional`` are the real code."""
    global _loaded
    if _loaded is not None:
        return _loaded
    import torch  # noqa: F401  (the extracted sources import it)

    if not reference_available_offline():
        if offline:
            raise RuntimeError(f"torchaudio reference sources are not cached in {cache_dir()}")
        _download_and_extract()
    kaldi_path, functional_path = _source_paths()
    root = types.ModuleType("torchaudio")
    root.__path__ = []  # a package, so that "import torchaudio.x" resolves through sys.modules
    root.compliance = types.ModuleType("torchaudio.compliance")
    root.compliance.__path__ = []
    root.sox_effects = types.ModuleType("torchaudio.sox_effects")
    saved = {k: sys.modules.get(k) for k in ("torchaudio", "torchaudio.functional")}
    try:
        sys.modules["torchaudio"] = root
        root.functional = _exec_module("torchaudio.functional", functional_path)
        sys.modules["torchaudio.functional"] = root.functional
        root.compliance.kaldi = _exec_module("torchaudio.compliance.kaldi", kaldi_path)
    finally:
        _restore_modules(saved)
    _loaded = root
    return root


def reference_mfcc_features(wav: np.ndarray, sr: int = 16000, offline: bool = False) -> np.ndarray:
    """fairseq ``MfccFeatureReader.get_feats`` on an in-memory waveform.

    Args:
        wav: float waveform ``(N,)`` in [-1, 1].
        sr: sample rate.
    Returns:
        ``(T, 39)`` float32: ``[mfcc, delta, delta-delta]``.
    """
    import torch

    ta = load_reference(offline=offline)
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(wav)).float().view(1, -1)
        mfccs = ta.compliance.kaldi.mfcc(waveform=x, sample_frequency=sr, use_energy=False)
        mfccs = mfccs.transpose(0, 1)  # (C, T)
        deltas = ta.functional.compute_deltas(mfccs)
        ddeltas = ta.functional.compute_deltas(deltas)
        concat = torch.cat([mfccs, deltas, ddeltas], dim=0).transpose(0, 1).contiguous()
    return concat.numpy()


# --------------------------------------------------------------------------- verification


def equivalence_signals(seed: int = 0, corpus: bool = True) -> dict:
    """Varied seeded waveforms ``{name: ([wav float32, ...], sample_rate)}`` for the equivalence sweep.

    With ``corpus``, also the 120 utterances of ``make_demo_corpus`` (6 speakers x 20, seed 0) that
    ``benchmarks/bench_mfcc.py`` dumps, read back from 16-bit wav files.
    """
    from scipy.signal import resample_poly

    from simple_kmeans.make_demo_corpus import make_speaker, synth_utterance

    rng = np.random.default_rng(seed)
    sr = 16000
    t = np.arange(3 * sr) / sr

    def q16(x):  # as stored in a 16-bit wav file
        return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)

    speech = [synth_utterance(make_speaker(i, rng), rng, sr)[0] for i in range(6)]
    sig = {
        "speech (demo corpus, 6 utts)": q16(np.concatenate(speech)),
        "speech 60 s": q16(np.concatenate(speech * (60 * sr // sum(map(len, speech)) + 1))[: 60 * sr]),
        "speech 8 kHz": (q16(resample_poly(speech[0], 1, 2)), 8000),
        "white noise 0.1": (0.1 * rng.standard_normal(10 * sr)).astype(np.float32),
        "loud noise, clipped": q16(2.0 * rng.standard_normal(2 * sr)),
        "tone 440 Hz": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "chirp 50-7900 Hz": (0.3 * np.sin(2 * np.pi * (50 * t + (7850 / 6) * t ** 2))).astype(np.float32),
        "square 200 Hz": (0.2 * np.sign(np.sin(2 * np.pi * 200 * t))).astype(np.float32),
        "near-silence 1e-5": (1e-5 * rng.standard_normal(2 * sr)).astype(np.float32),
        "int16 LSB noise": q16(rng.integers(-2, 3, 2 * sr) / 32768),
        "digital silence": np.zeros(sr, dtype=np.float32),
        "DC 0.3": np.full(sr, 0.3, dtype=np.float32),
    }
    for n in (400, 401, 559, 560, 1000):
        sig[f"{n} samples"] = q16(0.3 * rng.standard_normal(n))
    out = {k: ([v[0]], v[1]) if isinstance(v, tuple) else ([v], sr) for k, v in sig.items()}
    if corpus:
        import tempfile

        import soundfile as sf

        from simple_kmeans import make_demo_corpus

        with tempfile.TemporaryDirectory() as d:
            make_demo_corpus.main(d, n_speakers=6, utts_per_speaker=20, seed=0)
            wavs = [sf.read(p, dtype="float32")[0] for p in sorted(Path(d).rglob("*.wav"))]
        out["demo corpus 6x20 utts"] = (wavs, sr)
    return out


def verify(offline: bool = False) -> None:
    """Print the per-signal agreement of simple_kmeans.mfcc with the reference (and knf.OnlineMfcc).

    Columns: max |ours - ref| over all 39 dims, its 99.9th percentile, max |ours - ref| / (|ref| + 1),
    and for scale the same max for kaldi-native-fbank's own frame-by-frame ``OnlineMfcc`` vs the
    reference and vs ours (float32 rounding noise in near-empty mel bands dominates all three).
    """
    import kaldi_native_fbank as knf

    from simple_kmeans.mfcc import add_deltas, get_extractor, mfcc_features

    print(f"{'signal':<30}{'frames':>7}{'max|ref|':>10}{'max|diff|':>11}{'p99.9':>10}"
          f"{'max rel':>10}{'knf-ref':>10}{'ours-knf':>10}")
    def knf_features(wav, sr):
        m = knf.OnlineMfcc(get_extractor(sr).knf_options)
        m.accept_waveform(sr, wav)
        m.input_finished()
        return add_deltas(np.stack([m.get_frame(i) for i in range(m.num_frames_ready)]))

    for name, (wavs, sr) in equivalence_signals().items():
        ref = np.concatenate([reference_mfcc_features(w, sr, offline=offline) for w in wavs])
        ours = np.concatenate([mfcc_features(w, sr) for w in wavs])
        k = np.concatenate([knf_features(w, sr) for w in wavs])
        assert ours.shape == ref.shape == k.shape, (name, ours.shape, ref.shape, k.shape)
        d = np.abs(ours - ref)
        rel = float((d / (np.abs(ref) + 1.0)).max())
        print(f"{name:<30}{len(ref):>7}{float(np.abs(ref).max()):>10.2f}{float(d.max()):>11.2e}"
              f"{float(np.quantile(d, 0.999)):>10.2e}{rel:>10.2e}{float(np.abs(k - ref).max()):>10.2e}"
              f"{float(np.abs(ours - k).max()):>10.2e}")


def write_fixture(path: str, offline: bool = False) -> None:
    """Save a seeded ~1.5 s speech-like waveform, a 560-sample one and their reference features."""
    sig = equivalence_signals(corpus=False)
    wav = sig["speech (demo corpus, 6 utts)"][0][0][:24000]
    short = sig["560 samples"][0][0]
    np.savez_compressed(
        path, wav=wav, feats=reference_mfcc_features(wav, 16000, offline=offline),
        short_wav=short, short_feats=reference_mfcc_features(short, 16000, offline=offline),
        sample_rate=16000, torchaudio_version=TORCHAUDIO_VERSION,
    )
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main(wav: list[str], offline: bool = False, verify_: bool = False, write_fixture_: str | None = None) -> None:
    import soundfile as sf

    load_reference(offline=offline)
    print(f"torchaudio {TORCHAUDIO_VERSION} reference sources: {cache_dir()}")
    for path in wav:
        x, sr = sf.read(path, dtype="float32")
        print(f"{path}: features {reference_mfcc_features(x, sr).shape}")
    if verify_:
        verify(offline)
    if write_fixture_:
        write_fixture(write_fixture_, offline)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", nargs="*", help="audio files to featurise")
    parser.add_argument("--offline", action="store_true", help="fail instead of downloading")
    parser.add_argument("--verify", dest="verify_", action="store_true",
                        help="compare simple_kmeans.mfcc with the reference on varied signals")
    parser.add_argument("--write-fixture", dest="write_fixture_", metavar="NPZ",
                        help="write the test fixture (e.g. tests/data/mfcc_reference.npz)")
    return parser


if __name__ == "__main__":
    if str(Path(__file__).resolve().parents[1]) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(**vars(get_parser().parse_args()))
