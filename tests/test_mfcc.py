"""MFCC features (simple_kmeans/mfcc.py) and shard dumping (simple_kmeans/dump_mfcc_feature.py).

Equivalence with fairseq's reference (torchaudio's kaldi.mfcc + compute_deltas) is checked on
a committed fixture, tests/data/mfcc_reference.npz (written by
``python -m benchmarks.torchaudio_reference --write-fixture``), with ``atol=5e-3, rtol=1e-3``
(float32 rounding; see the tolerance study in simple_kmeans/mfcc.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, write_manifest
from simple_kmeans import dump_mfcc_feature
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import load_feat_shard, read_lengths
from simple_kmeans.mfcc import MfccExtractor, add_deltas, compute_deltas, get_extractor, mfcc_features

FIXTURE = Path(__file__).parent / "data" / "mfcc_reference.npz"
ATOL, RTOL = 5e-3, 1e-3


def _speechlike(seed: int, seconds: float = 1.0) -> np.ndarray:
    from simple_kmeans.make_demo_corpus import make_speaker, synth_utterance

    rng = np.random.default_rng(seed)
    out = []
    while sum(map(len, out)) < seconds * 16000:
        out.append(synth_utterance(make_speaker(seed, rng), rng, 16000)[0])
    return np.concatenate(out)[: int(seconds * 16000)]


def _run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "simple_kmeans.dump_mfcc_feature", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- features


def test_matches_fairseq_reference_fixture():
    z = np.load(FIXTURE)
    assert int(z["sample_rate"]) == 16000
    for wav_key, feat_key in (("wav", "feats"), ("short_wav", "short_feats")):
        ours = mfcc_features(z[wav_key], 16000)
        ref = z[feat_key]
        assert ours.dtype == np.float32
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=RTOL)
    # the bulk is far tighter than the worst frame
    diff = np.abs(mfcc_features(z["wav"]) - z["feats"])
    assert np.median(diff) < 1e-4


def test_matches_knf_online_mfcc():
    """Same numbers as kaldi-native-fbank's own frame-by-frame OnlineMfcc (+ our deltas)."""
    import kaldi_native_fbank as knf

    rng = np.random.default_rng(1)
    for wav in (_speechlike(3, 1.5), (0.1 * rng.standard_normal(8000)).astype(np.float32)):
        m = knf.OnlineMfcc(get_extractor(16000).knf_options)
        m.accept_waveform(16000, wav)
        m.input_finished()
        ref = np.stack([m.get_frame(i) for i in range(m.num_frames_ready)])
        np.testing.assert_allclose(get_extractor(16000).mfcc(wav), ref, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(mfcc_features(wav), add_deltas(ref), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n", [0, 1, 399, 400, 401, 559, 560, 16000, 16123])
def test_shape_and_frame_count(n):
    wav = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    feats = mfcc_features(wav)
    expected = 1 + (n - 400) // 160 if n >= 400 else 0
    assert feats.shape == (expected, 39)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()


def test_other_sample_rate_frame_geometry():
    wav = _speechlike(2, 1.0)[::2].copy()  # 8 kHz: 200-sample windows, 80-sample shift
    assert mfcc_features(wav, 8000).shape == (1 + (len(wav) - 200) // 80, 39)


def test_block_size_does_not_change_features():
    wav = _speechlike(4, 3.0)
    a = MfccExtractor(16000, block_frames=7)(wav)
    b = MfccExtractor(16000, block_frames=100_000)(wav)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_input_dtype_and_rank():
    wav = _speechlike(5, 0.5)
    np.testing.assert_array_equal(mfcc_features(wav.astype(np.float64)), mfcc_features(wav))
    with pytest.raises(ValueError, match="mono"):
        mfcc_features(np.stack([wav, wav]))


def _naive_deltas(x: np.ndarray, win_length: int) -> np.ndarray:
    n = (win_length - 1) // 2
    t = len(x)
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(t):
        for k in range(1, n + 1):
            out[i] += k * (x[min(i + k, t - 1)] - x[max(i - k, 0)])
    return out / (2 * sum(k * k for k in range(1, n + 1)))


@pytest.mark.parametrize("t", [1, 2, 3, 6, 50])
@pytest.mark.parametrize("win_length", [3, 4, 5, 9])
def test_compute_deltas_definition(t, win_length):
    x = np.random.default_rng(t * 10 + win_length).standard_normal((t, 4)).astype(np.float32)
    d = compute_deltas(x, win_length)
    assert d.shape == x.shape and d.dtype == np.float32
    np.testing.assert_allclose(d, _naive_deltas(x, win_length), rtol=1e-5, atol=1e-5)


def test_compute_deltas_edge_cases():
    assert compute_deltas(np.zeros((0, 13), np.float32)).shape == (0, 13)
    ramp = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(compute_deltas(ramp)[2:-2], 1.0)  # slope of a ramp
    with pytest.raises(ValueError):
        compute_deltas(ramp, win_length=2)


# --------------------------------------------------------------------------- dumping


def _shard(feat_dir, split="train", rank=0, nshard=1):
    feats, lengths = load_feat_shard(feat_dir, split, rank, nshard, mmap=False)
    return feats, lengths


def test_dump_round_trip(demo_manifest, tmp_path):
    npy, lenp = dump_mfcc_feature.main(str(demo_manifest), "train", 1, 0, str(tmp_path / "feat"))
    assert npy == tmp_path / "feat" / "train_0_1.npy" and lenp == tmp_path / "feat" / "train_0_1.len"
    feats, lengths = _shard(tmp_path / "feat")
    lines = (demo_manifest / "train.tsv").read_text().splitlines()
    root, rows = lines[0], [line.split("\t") for line in lines[1:]]
    assert len(lengths) == len(rows) == 12
    assert feats.dtype == np.float32 and feats.shape == (lengths.sum(), 39)
    offset = 0
    for (rel, n), length in zip(rows, lengths):
        assert length == 1 + (int(n) - 400) // 160
        wav = sf.read(os.path.join(root, rel), dtype="float32")[0]
        np.testing.assert_array_equal(feats[offset: offset + length], mfcc_features(wav))
        offset += length
    assert sorted(p.name for p in (tmp_path / "feat").iterdir()) == ["train_0_1.len", "train_0_1.npy"]


def test_two_shards_cover_manifest(demo_manifest, tmp_path):
    dump_mfcc_feature.main(str(demo_manifest), "train", 1, 0, str(tmp_path / "one"))
    for rank in range(2):
        dump_mfcc_feature.main(str(demo_manifest), "train", 2, rank, str(tmp_path / "two"))
    whole, whole_len = _shard(tmp_path / "one")
    parts = [_shard(tmp_path / "two", rank=r, nshard=2) for r in range(2)]
    assert [len(p[1]) for p in parts] == [6, 6]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_len)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole)


def test_rerun_redoes_shard_without_appending(demo_manifest, tmp_path):
    out = tmp_path / "feat"
    npy, lenp = dump_mfcc_feature.main(str(demo_manifest), "train", 2, 1, str(out))
    first = (npy.read_bytes(), lenp.read_bytes())
    dump_mfcc_feature.main(str(demo_manifest), "train", 2, 1, str(out))
    assert (npy.read_bytes(), lenp.read_bytes()) == first
    # a stale, bigger shard from another corpus is replaced, not extended
    np.save(npy, np.ones((5000, 39), np.float32))
    lenp.write_text("5000\n")
    dump_mfcc_feature.main(str(demo_manifest), "train", 2, 1, str(out))
    assert (npy.read_bytes(), lenp.read_bytes()) == first


def test_cli_and_help(demo_manifest, tmp_path):
    r = _run_cli("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage") and "Usage:" in r.stdout
    r = _run_cli(str(demo_manifest), "train", "1", "0", str(tmp_path / "feat"), "--sample-rate", "16000",
                 "--batch-frames", "64")
    assert r.returncode == 0, r.stderr
    dump_mfcc_feature.main(str(demo_manifest), "train", 1, 0, str(tmp_path / "api"))
    a, b = _shard(tmp_path / "feat"), _shard(tmp_path / "api")
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-4, rtol=1e-5)


def _write_wav(path: Path, data: np.ndarray, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype="PCM_16")
    return path


def _bad_corpus(tmp_path: Path, bad: str) -> Path:
    """A 3-file manifest whose second file is broken in the way ``bad`` says."""
    rng = np.random.default_rng(0)
    root = tmp_path / "wav"
    good = [_write_wav(root / f"a{i}.wav", 0.1 * rng.standard_normal(4000)) for i in (0, 2)]
    name = root / "a1.wav"
    if bad == "stereo":
        _write_wav(name, 0.1 * rng.standard_normal((4000, 2)))
    elif bad == "rate":
        _write_wav(name, 0.1 * rng.standard_normal(2000), sr=8000)
    elif bad == "short":
        _write_wav(name, 0.1 * rng.standard_normal(300))
    elif bad in ("missing", "length"):
        _write_wav(name, 0.1 * rng.standard_normal(4000))
    tsv = write_manifest(root, tmp_path / "manifest" / "train.tsv", [good[0], name, good[1]])
    if bad == "missing":
        name.unlink()
    elif bad == "length":
        _write_wav(name, 0.1 * rng.standard_normal(4100))
    return tsv.parent


@pytest.mark.parametrize("bad,message", [
    ("rate", "has sample rate 8000 Hz, expected 16000"),
    ("missing", "does not exist"),
    ("length", "has 4100 samples but the manifest says 4000"),
    ("short", "shorter than one 400-sample analysis window"),
])
def test_bad_inputs_exit_2_naming_file_and_line(tmp_path, caplog, bad, message):
    tsv_dir = _bad_corpus(tmp_path, bad)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        dump_mfcc_feature.cli([str(tsv_dir), "train", "1", "0", str(tmp_path / "feat")])
    assert e.value.code == 2
    assert message in caplog.text
    assert "train.tsv:3" in caplog.text and "a1.wav" in caplog.text  # manifest line 3 = 2nd file
    # nothing that looks like a finished shard, and no temp files left behind
    assert not (tmp_path / "feat").exists() or list((tmp_path / "feat").iterdir()) == []


def test_stereo_via_cli_subprocess(tmp_path):
    tsv_dir = _bad_corpus(tmp_path, "stereo")
    r = _run_cli(str(tsv_dir), "train", "1", "0", str(tmp_path / "feat"))
    assert r.returncode == 2
    assert "train.tsv:3" in r.stderr and "a1.wav has 2 channels" in r.stderr
    assert "Traceback" not in r.stderr
    assert list((tmp_path / "feat").iterdir()) == []


def test_too_many_shards(demo_manifest, tmp_path, caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        dump_mfcc_feature.cli([str(demo_manifest), "train", "13", "0", str(tmp_path / "feat")])
    assert e.value.code == 2 and "nshard=13" in caplog.text and "12" in caplog.text
    with pytest.raises(UserError, match="does not exist"):
        dump_mfcc_feature.main(str(tmp_path), "train", 1, 0, str(tmp_path / "feat"))


def test_failed_rerun_leaves_no_finished_looking_shard(demo_manifest, tmp_path):
    """A previous complete shard is removed before redoing it; a failure mid-shard leaves nothing."""
    out = tmp_path / "feat"
    dump_mfcc_feature.main(str(demo_manifest), "train", 1, 0, str(out))
    tsv = (demo_manifest / "train.tsv").read_text().splitlines()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.tsv").write_text("\n".join(tsv[:6] + ["nope.wav\t16000"] + tsv[6:]) + "\n")
    with pytest.raises(UserError, match="train.tsv:7: audio file .*nope.wav does not exist"):
        dump_mfcc_feature.main(str(broken), "train", 1, 0, str(out))
    assert list(out.iterdir()) == []


def test_killed_job_leaves_only_temp_files(demo_manifest, tmp_path):
    """SIGKILL mid-shard: only hidden temp files remain; the next run cleans them and succeeds."""
    out = tmp_path / "feat"
    code = (
        "import os, signal, sys\n"
        "from simple_kmeans import dump_mfcc_feature as d\n"
        "from fairseq_ext.base import bad_audio as skip_bad\n"  # the dumper reads through BadAudio.read
        "calls = []\n"
        "real = skip_bad.read_audio\n"
        "def read_audio(*a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a, **k)\n"
        "skip_bad.read_audio = read_audio\n"
        f"d.main({str(demo_manifest)!r}, 'train', 1, 0, {str(out)!r})\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr
    left = sorted(p.name for p in out.iterdir())
    assert left and all(name.startswith(".train_0_1.") and ".tmp" in name for name in left), left
    with pytest.raises(UserError):
        load_feat_shard(out, "train", 0, 1)
    dump_mfcc_feature.main(str(demo_manifest), "train", 1, 0, str(out))
    assert sorted(p.name for p in out.iterdir()) == ["train_0_1.len", "train_0_1.npy"]
    assert len(read_lengths(out / "train_0_1.len")) == 12


def test_memory_does_not_grow_with_shard_size(tmp_path):
    wav = _write_wav(tmp_path / "wav" / "x.wav", 0.1 * np.random.default_rng(0).standard_normal(48000))
    links = []  # one signal in 40 files (a manifest refuses a file listed twice)
    for i in range(40):
        links.append(tmp_path / "wav" / f"x{i}.wav")
        shutil.copyfile(wav, links[-1])
    peaks = []
    for copies in (4, 40):
        d = tmp_path / f"m{copies}"
        d.mkdir()
        write_manifest(tmp_path / "wav", d / "train.tsv", links[:copies])
        tracemalloc.start()
        dump_mfcc_feature.main(str(d), "train", 1, 0, str(tmp_path / f"feat{copies}"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert read_lengths(tmp_path / "feat40" / "train_0_1.len").sum() == 40 * 298
    assert peaks[1] < 1.5 * peaks[0] + 200_000, peaks


@pytest.mark.skipif(
    not __import__("benchmarks.torchaudio_reference", fromlist=["x"]).reference_available_offline(),
    reason="torchaudio reference sources not cached (python -m benchmarks.torchaudio_reference)",
)
def test_matches_cached_torchaudio_reference():
    from benchmarks.torchaudio_reference import reference_mfcc_features

    rng = np.random.default_rng(7)
    for wav in (_speechlike(6, 2.0), (0.05 * rng.standard_normal(5000)).astype(np.float32),
                np.zeros(1000, np.float32), (1e-5 * rng.standard_normal(3000)).astype(np.float32)):
        ref = reference_mfcc_features(wav, 16000, offline=True)
        np.testing.assert_allclose(mfcc_features(wav), ref, atol=ATOL, rtol=RTOL)
