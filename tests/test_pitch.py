"""Pitch features (dump_pitch_feature.py) and their statistics (pitch_stats.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from simple_kmeans import dump_pitch_feature as dpf
from simple_kmeans import pitch_stats
from fairseq_ext.base import frames
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.shards import load_feat_shard
from tests.conftest import write_manifest

REPO = Path(__file__).resolve().parents[1]


def _dump(manifest_dir: Path, feat_dir: Path, nshard: int = 1, **kw) -> None:
    for rank in range(nshard):
        dpf.main(str(manifest_dir), "train", nshard, rank, str(feat_dir), **kw)


def _load(feat_dir: Path, nshard: int = 1):
    feats, lengths = [], []
    for rank in range(nshard):
        f, n = load_feat_shard(feat_dir, "train", rank, nshard)
        feats.append(np.asarray(f))
        lengths.extend(n.tolist())
    return np.concatenate(feats), lengths


def _per_utt(feats, lengths):
    offsets = np.cumsum([0] + list(lengths))
    return [feats[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]


@pytest.fixture(scope="module")
def dumped(demo_manifest, tmp_path_factory):
    """The demo corpus dumped at 50 Hz (2 shards) and 100 Hz (1 shard)."""
    out = tmp_path_factory.mktemp("pitch")
    _dump(demo_manifest, out / "f50", nshard=2, frame_rate=50)
    _dump(demo_manifest, out / "f100", nshard=1, frame_rate=100)
    return out


# --------------------------------------------------------------------------- frame grids


def test_50hz_frame_count_matches_hubert_cnn():
    import torch
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    cnn = ConvFeatureExtractionModel([(4, k, s) for _, k, s in frames.HUBERT_CONV_LAYERS], mode="default")
    assert frames.conv_receptive_field() == (400, 320)
    with torch.no_grad():
        for n in [400, 401, 719, 720, 721, 1039, 1040, 16000, 19199, 19520, 33333]:
            assert frames.frames_at_rate(n, 50) == cnn(torch.zeros(1, n)).shape[-1], n
    assert frames.frames_at_rate(399, 50) == 0


def test_100hz_frame_count_matches_mfcc():
    from simple_kmeans.mfcc import mfcc_features

    rng = np.random.default_rng(0)
    for n in [400, 401, 559, 560, 16000, 19999]:
        assert frames.frames_at_rate(n, 100) == mfcc_features(rng.standard_normal(n).astype(np.float32) * 0.1).shape[0]
        assert frames.frames_at_rate(n, 100) == 1 + (n - 400) // 160
    assert frames.frames_at_rate(399, 100) == 0


def test_dump_shapes_at_both_rates(dumped, demo_manifest):
    manifest = read_manifest(demo_manifest / "train.tsv")
    for rate, nshard in ((50, 2), (100, 1)):
        feats, lengths = _load(dumped / f"f{rate}", nshard)
        assert feats.dtype == np.float32 and feats.shape == (sum(lengths), 2)
        assert lengths == [frames.frames_at_rate(e.n_samples, rate) for e in manifest.entries]
        assert np.isfinite(feats).all()
        assert set(np.unique(feats[:, 1])) == {0.0, 1.0}
        assert 0.3 < feats[:, 1].mean() < 0.9  # the corpus is mostly vowels and nasals
        assert np.all((feats[:, 0] > math.log(60) - 1e-4) & (feats[:, 0] < math.log(400) + 1e-4))
    # 50 Hz frame j is centred where 100 Hz frame 2j is: both read the same analysis frame
    f50, l50 = _load(dumped / "f50", 2)
    f100, l100 = _load(dumped / "f100", 1)
    for a, b in zip(_per_utt(f50, l50), _per_utt(f100, l100)):
        assert len(b) // 2 <= len(a) <= (len(b) + 1) // 2
        np.testing.assert_array_equal(a[:, 1], b[::2][:len(a), 1])
        voiced = a[:, 1] > 0
        np.testing.assert_array_equal(a[voiced, 0], b[::2][:len(a)][voiced, 0])


def test_interpolation_over_unvoiced_frames():
    f0 = np.array([0, 0, 100, 0, 0, 0, 200, 0], dtype=float)
    out = dpf.interpolate_log_f0(f0, fill=5.0)
    assert out.dtype == np.float32 and out.shape == (8, 2)
    np.testing.assert_array_equal(out[:, 1], [0, 0, 1, 0, 0, 0, 1, 0])
    lo, hi = math.log(100), math.log(200)
    np.testing.assert_allclose(out[:, 0], [lo, lo, lo, lo + (hi - lo) / 4, lo + (hi - lo) / 2,
                                           lo + 3 * (hi - lo) / 4, hi, hi], rtol=1e-6)
    silent = dpf.interpolate_log_f0(np.zeros(5), fill=5.0)
    np.testing.assert_array_equal(silent, np.tile([5.0, 0.0], (5, 1)))
    assert dpf.interpolate_log_f0(np.zeros(0), fill=5.0).shape == (0, 2)


def test_silent_and_short_files(tmp_path):
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    t = np.arange(16000) / 16000
    sf.write(wav_dir / "a_silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(wav_dir / "b_short.wav", np.zeros(300, dtype=np.float32), 16000)
    sf.write(wav_dir / "c_tone.wav", (0.3 * np.sign(np.sin(2 * np.pi * 150 * t))).astype(np.float32), 16000)
    write_manifest(wav_dir, tmp_path / "m" / "train.tsv")
    _dump(tmp_path / "m", tmp_path / "f", frame_rate=50)
    feats, lengths = _load(tmp_path / "f")
    silent, short, tone = _per_utt(feats, lengths)
    assert lengths == [frames.frames_at_rate(16000, 50), 0, frames.frames_at_rate(16000, 50)]
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(silent[:, 0], dpf.default_log_f0(60, 400), rtol=1e-6)
    assert (silent[:, 1] == 0).all()
    assert tone[:, 1].mean() > 0.9
    assert abs(np.median(tone[tone[:, 1] > 0, 0]) - math.log(150)) < 0.02


def _accuracy(feats, lengths, manifest, f0_ref, rate):
    """Voicing agreement and |error| in cents against the demo corpus' true F0 (100 Hz, 0 = unvoiced)."""
    agree, cents = [], []
    for entry, x in zip(manifest.entries, _per_utt(feats, lengths)):
        ref = f0_ref[manifest.uid(entry)]
        idx = frames.frame_centres(len(x), rate) // 160  # the reference frame holding each frame centre
        keep = idx < len(ref)
        x, r = x[keep], ref[idx[keep]]
        agree.append((x[:, 1] > 0) == (r > 0))
        both = (x[:, 1] > 0) & (r > 0)
        cents.append(np.abs(1200 / math.log(2) * (x[both, 0] - np.log(r[both]))))
    return np.concatenate(agree).mean(), np.median(np.concatenate(cents))


def test_accuracy_against_true_f0(dumped, demo_corpus, demo_manifest):
    f0_ref = {}
    for line in (demo_corpus / "f0.tsv").read_text().splitlines():
        uid, values = line.split("\t")
        f0_ref[uid] = np.array([float(v) for v in values.split(",")])
    manifest = read_manifest(demo_manifest / "train.tsv")
    for rate, nshard in ((50, 2), (100, 1)):
        voicing, median_cents = _accuracy(*_load(dumped / f"f{rate}", nshard), manifest, f0_ref, rate)
        assert voicing > 0.9, (rate, voicing)  # measured 0.96
        assert median_cents < 20, (rate, median_cents)  # measured ~5 cents


def test_harvest_method_agrees_with_dio(demo_manifest):
    manifest = read_manifest(demo_manifest / "train.tsv")
    import soundfile

    wav, _ = soundfile.read(manifest.audio_path(manifest.entries[0]), dtype="float32")
    dio = dpf.PitchExtractor(100, method="dio")(wav)
    harvest = dpf.PitchExtractor(100, method="harvest")(wav)
    assert dio.shape == harvest.shape
    both = (dio[:, 1] > 0) & (harvest[:, 1] > 0)
    assert both.mean() > 0.4
    assert np.median(np.abs(dio[both, 0] - harvest[both, 0])) < 0.03


def test_bad_options():
    with pytest.raises(UserError, match="f0-floor"):
        dpf.PitchExtractor(50, f0_floor=400, f0_ceil=60)
    with pytest.raises(UserError, match="frame-rate"):
        dpf.PitchExtractor(25)


# --------------------------------------------------------------------------- statistics


def _direct_stats(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(), len(values)


def test_stats_merge_global_and_per_speaker(dumped, demo_manifest, demo_corpus, tmp_path):
    feats, lengths = _load(dumped / "f50", 2)
    table = dict(line.split("\t") for line in (demo_corpus / "speakers.tsv").read_text().splitlines())
    manifest = read_manifest(demo_manifest / "train.tsv")
    speakers = [table[manifest.uid(e)] for e in manifest.entries]
    spk_file = tmp_path / "train.spk"
    spk_file.write_text("".join(s + "\n" for s in speakers))
    out = pitch_stats.main(str(dumped / "f50"), "train", 2, spk_file=str(spk_file))
    stats = json.loads(out.read_text())
    assert out == dumped / "f50" / "train.pitch_stats.json"
    assert set(stats) == {"global", "speakers"}
    mean, std, n = _direct_stats(feats[feats[:, 1] > 0, 0])
    assert stats["global"]["n"] == n
    assert stats["global"]["mean"] == pytest.approx(mean, abs=1e-6)
    assert stats["global"]["std"] == pytest.approx(std, abs=1e-6)
    utts = _per_utt(feats, lengths)
    assert sorted(stats["speakers"]) == sorted(set(speakers))
    for name, s in stats["speakers"].items():
        values = np.concatenate([u[u[:, 1] > 0, 0] for u, spk in zip(utts, speakers) if spk == name])
        mean, std, n = _direct_stats(values)
        assert (s["n"], s["mean"], s["std"]) == (n, pytest.approx(mean, abs=1e-6), pytest.approx(std, abs=1e-6))
    # speakers differ in pitch (the corpus' speakers alternate low / high voices)
    means = sorted(s["mean"] for s in stats["speakers"].values())
    assert means[-1] - means[0] > 0.3
    # without a speaker file: global only, and the same numbers from a single shard
    _dump(demo_manifest, tmp_path / "one", nshard=1, frame_rate=50)
    single = json.loads(pitch_stats.main(str(tmp_path / "one"), "train", 1).read_text())
    assert set(single) == {"global"}
    assert single["global"]["n"] == stats["global"]["n"]
    assert single["global"]["mean"] == pytest.approx(stats["global"]["mean"], abs=1e-9)
    assert single["global"]["std"] == pytest.approx(stats["global"]["std"], abs=1e-9)


def test_stats_errors(dumped, tmp_path):
    bad = tmp_path / "bad.spk"
    bad.write_text("spk00\n")
    with pytest.raises(UserError, match="one speaker per manifest line"):
        pitch_stats.merge_stats(str(dumped / "f50"), "train", 2, spk_file=str(bad))
    with pytest.raises(UserError, match=r"train_0_3\.pitch_stats\.json does not exist"):
        pitch_stats.merge_stats(str(dumped / "f50"), "train", 3)


def test_speaker_without_voiced_frames_gets_global_stats():
    moments = np.array([[10, 5.0, 1.0], [0, 0.0, 0.0]])
    overall = pitch_stats.combine_moments(moments)
    out = pitch_stats.speaker_stats(moments, ["a", "b"], overall)
    assert out["b"] == {"mean": overall["mean"], "std": overall["std"], "n": 0}
    assert out["a"]["n"] == 10 and out["a"]["std"] == pytest.approx(math.sqrt(0.1))


def test_rerun_replaces_outputs(demo_manifest, tmp_path):
    _dump(demo_manifest, tmp_path, frame_rate=100)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _dump(demo_manifest, tmp_path, frame_rate=100)
    second = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert first == second  # same files, same bytes: nothing appended, no temporary left
    assert sorted(first) == ["train_0_1.len", "train_0_1.npy", "train_0_1.pitch_stats.json"]


def test_cli(demo_manifest, tmp_path):
    for module in ("simple_kmeans.dump_pitch_feature", "simple_kmeans.pitch_stats"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0 and "Usage:" in out.stdout
    run = subprocess.run([sys.executable, "simple_kmeans/dump_pitch_feature.py", str(demo_manifest), "train",
                          "1", "0", str(tmp_path), "--method", "dio"],
                         capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr
    # no flag: 100 Hz, the pitch_rate of the shipped dhubert configs
    lengths = np.loadtxt(tmp_path / "train_0_1.len", dtype=int, ndmin=1).tolist()
    n_samples = [e.n_samples for e in read_manifest(demo_manifest / "train.tsv").entries]
    assert lengths == [frames.frames_at_rate(n, 100) for n in n_samples]
    assert lengths != [frames.frames_at_rate(n, 50) for n in n_samples]
    for name in ("dhubert_tiny", "dhubert_base_librispeech"):
        assert "pitch_rate: 100\n" in (REPO / "config" / "pretrain" / f"{name}.yaml").read_text()
    merge = subprocess.run([sys.executable, "-m", "simple_kmeans.pitch_stats", str(tmp_path), "train", "2"],
                           capture_output=True, text=True, cwd=REPO)
    assert merge.returncode == 2 and "train_0_2.pitch_stats.json does not exist" in merge.stderr
