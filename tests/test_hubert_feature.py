"""simple_kmeans/dump_hubert_feature.py (over fairseq_ext.encoder): padding-exact batching, fairseq parity,
outputs, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO, write_manifest
from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

from simple_kmeans import dump_hubert_feature as dhf
from fairseq_ext.encoder import ChunkedReader, HubertUpstream, load_upstream, plan_batches
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.shards import load_feat_shard


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    """extractor_mode=default (GroupNorm over time in conv layer 1), as HuBERT Base."""
    return make_tiny_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "base.pt", label_rate=100)


@pytest.fixture(scope="module")
def ln_ckpt(tmp_path_factory) -> Path:
    """extractor_mode=layer_norm with task.normalize=true, as HuBERT Large."""
    return make_tiny_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "ln.pt", label_rate=50,
                                       extractor_mode="layer_norm", normalize=True, seed=1)


def _wavs(manifest_dir: Path):
    m = read_manifest(manifest_dir / "train.tsv")
    return [sf.read(m.audio_path(e), dtype="float32")[0] for e in m.entries]


def _reader(ckpt: Path, layer: int, max_chunk: int = 1600000) -> ChunkedReader:
    return ChunkedReader(load_upstream(str(ckpt)), [layer], max_chunk)


def _extract(reader: ChunkedReader, wavs, batch_samples: int):
    (layer,) = reader.layers
    return [f[layer] for f in reader.extract(wavs, batch_samples)]


def _check_batched_equals_single(reader: ChunkedReader, wavs) -> None:
    batch_samples = 4 * max(len(w) for w in wavs)
    batches = plan_batches([len(w) for w in wavs], batch_samples)
    assert any(len({len(wavs[i]) for i in b}) > 1 for b in batches), "no batch with padding"
    batched = _extract(reader, wavs, batch_samples)
    single = [_extract(reader, [w], 0)[0] for w in wavs]
    for w, b, s in zip(wavs, batched, single):
        assert b.shape == s.shape == (reader.num_frames(len(w)), 64)
        np.testing.assert_allclose(b, s, atol=1e-5, rtol=0)


def test_batched_equals_single_default_extractor(base_ckpt, demo_manifest):
    reader = _reader(base_ckpt, layer=2)
    assert not reader.upstream.cnn_batchable
    wavs = _wavs(demo_manifest)
    _check_batched_equals_single(reader, wavs)

    # The check is sensitive: naive batching (zero-padded waveforms + waveform padding mask
    # through extract_features) changes the CNN's GroupNorm statistics and the frame mask.
    src = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in wavs[:4]], batch_first=True)
    mask = torch.arange(src.size(1))[None] >= torch.tensor([len(w) for w in wavs[:4]])[:, None]
    with torch.no_grad():
        naive, _ = reader.upstream.model.extract_features(src, padding_mask=mask, mask=False, output_layer=2)
    i = int(np.argmin([len(w) for w in wavs[:4]]))  # the shortest one is padded
    exact = _extract(reader, [wavs[i]], 0)[0]
    assert np.abs(naive[i, : len(exact)].numpy() - exact).max() > 1e-2


def test_batched_equals_single_layer_norm_extractor_normalized(ln_ckpt, demo_manifest):
    reader = _reader(ln_ckpt, layer=1)
    assert reader.upstream.cnn_batchable and reader.upstream.normalize
    _check_batched_equals_single(reader, _wavs(demo_manifest))


def test_batched_equals_single_dhubert_subclass(demo_manifest):
    """This package's HubertModel subclasses go through the same padding-exact path."""
    from fairseq.data import Dictionary
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    from fairseq_ext.models.dhubert import DHubertConfig, DHubertModel
    from fairseq_ext.tiny_checkpoint import TINY_CONV_LAYERS

    cfg = DHubertConfig(label_rate=50, encoder_layers=2, encoder_embed_dim=64,
                        encoder_ffn_embed_dim=128, encoder_attention_heads=2, final_dim=32,
                        conv_pos=16, conv_pos_groups=4, conv_feature_layers=TINY_CONV_LAYERS,
                        spk_layer=1, pitch_layer=0, adv_schedule="constant", max_update=10)
    d = Dictionary()
    for i in range(5):
        d.add_symbol(str(i))
    torch.manual_seed(0)
    model = DHubertModel(cfg, HubertPretrainingConfig(data="x", labels=["km"]), [d], n_speakers=3)
    reader = ChunkedReader(HubertUpstream(model), [2])
    _check_batched_equals_single(reader, _wavs(demo_manifest))


@pytest.mark.parametrize("ckpt_name,max_chunk", [("base", 1600000), ("ln", 10000)])
def test_matches_fairseq_reader(ckpt_name, max_chunk, base_ckpt, ln_ckpt, demo_manifest, tmp_path):
    from benchmarks.bench_hubert_feature import fairseq_hubert_reader

    ckpt = str(base_ckpt if ckpt_name == "base" else ln_ckpt)
    npy, lenp = dhf.main(str(demo_manifest), "train", ckpt, 2, 1, 0, str(tmp_path),
                         max_chunk=max_chunk, batch_seconds=5, device="cpu")
    ours, lengths = load_feat_shard(tmp_path, "train", 0, 1)
    ref_reader = fairseq_hubert_reader(ckpt, 2, max_chunk)
    m = read_manifest(demo_manifest / "train.tsv")
    # fairseq's script crashes on a last piece shorter than the CNN's receptive field
    assert all(e.n_samples % max_chunk == 0 or e.n_samples % max_chunk >= 400 for e in m.entries)
    ref = [ref_reader.get_feats(m.audio_path(e), e.n_samples).numpy() for e in m.entries]
    assert lengths.tolist() == [len(r) for r in ref]
    np.testing.assert_allclose(ours, np.concatenate(ref), atol=1e-4, rtol=0)


def test_max_chunk_short_tail_gives_no_frame(base_ckpt):
    reader = _reader(base_ckpt, layer=1, max_chunk=8000)
    wav = np.random.default_rng(0).standard_normal(2 * 8000 + 399).astype(np.float32)
    assert reader.pieces(len(wav)) == [(0, 8000), (8000, 16000)]
    feats = _extract(reader, [wav, wav[:16000]], 10**6)
    assert len(feats[0]) == reader.num_frames(len(wav)) == 2 * ((8000 - 400) // 320 + 1)
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-5)


def test_layout_frame_counts_and_rerun(base_ckpt, demo_manifest, tmp_path):
    m = read_manifest(demo_manifest / "train.tsv")
    for rank in range(2):
        dhf.main(str(demo_manifest), "train", str(base_ckpt), 1, 2, rank, str(tmp_path / "f"),
                 batch_seconds=3, device="cpu")
    n_frames = []
    for rank, entries in enumerate([m.shard(2, 0), m.shard(2, 1)]):
        feats, lengths = load_feat_shard(tmp_path / "f", "train", rank, 2, mmap=False)
        assert feats.dtype == np.float32 and feats.shape[1] == 64
        # HuBERT CNN: 400-sample receptive field, 320-sample stride.
        assert lengths.tolist() == [(e.n_samples - 400) // 320 + 1 for e in entries]
        n_frames.append(len(feats))
    assert sorted(os.listdir(tmp_path / "f")) == [
        "train_0_2.len", "train_0_2.npy", "train_1_2.len", "train_1_2.npy"]
    before = np.load(tmp_path / "f" / "train_1_2.npy")
    (tmp_path / "f" / "train_1_2.npy").write_bytes(b"stale")  # a rerun replaces, never appends
    dhf.main(str(demo_manifest), "train", str(base_ckpt), 1, 2, 1, str(tmp_path / "f"), device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "f" / "train_1_2.npy"), before, atol=1e-5)
    assert len(os.listdir(tmp_path / "f")) == 4


def test_plan_batches():
    lengths = [10, 50, 30, 40, 20]
    batches = plan_batches(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1 for b in batches)
    assert batches[0] == [1, 3]  # longest first: 50, 40 (3 x 50 > 100)
    assert [2] in batches and [4] in batches  # 20 < 0.75 x 30: not padded to 30
    assert plan_batches(lengths, 1000, min_fill=0.0) == [[1, 3, 2, 4, 0]]
    assert plan_batches(lengths, 0) == [[0], [1], [2], [3], [4]]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_cli_subprocess(base_ckpt, demo_manifest, tmp_path):
    script = REPO / "simple_kmeans" / "dump_hubert_feature.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                         env=_env(), cwd=tmp_path)
    assert out.returncode == 0 and "Usage:" in out.stdout and "--max_chunk" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "simple_kmeans.dump_hubert_feature", str(demo_manifest), "train",
         str(base_ckpt), "2", "1", "0", str(tmp_path / "feat"), "--batch-seconds", "4"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    feats, lengths = load_feat_shard(tmp_path / "feat", "train", 0, 1)
    assert len(lengths) == 12 and feats.shape == (lengths.sum(), 64)


def _cli_error(argv, caplog) -> str:
    with pytest.raises(SystemExit) as e:
        dhf.cli([str(a) for a in argv])
    assert e.value.code == 2
    return caplog.text


def test_cli_errors(base_ckpt, demo_manifest, demo_corpus, tmp_path, caplog):
    d = str(demo_manifest)
    text = _cli_error([d, "train", tmp_path / "missing.pt", 1, 1, 0, tmp_path], caplog)
    assert "missing.pt does not exist" in text
    text = _cli_error([d, "train", base_ckpt, 3, 1, 0, tmp_path], caplog)
    assert "layer 3 is out of range" in text and "1..2" in text
    text = _cli_error([d, "train", base_ckpt, 0, 1, 0, tmp_path], caplog)
    assert "layer 0 is out of range" in text
    text = _cli_error([d, "train", base_ckpt, 1, 1, 0, tmp_path, "--max_chunk", 300], caplog)
    assert "--max_chunk 300 is shorter than the CNN's receptive field" in text

    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (demo_manifest / "train.tsv").read_text().splitlines()
    (bad / "train.tsv").write_text("\n".join(lines[:2] + [lines[2].split("\t")[0] + "\tabc"]) + "\n")
    text = _cli_error([bad, "train", base_ckpt, 1, 1, 0, tmp_path], caplog)
    assert "train.tsv:3" in text and "not an integer" in text
    rel, n = lines[1].split("\t")
    (bad / "train.tsv").write_text(f"{lines[0]}\n{rel}\t{int(n) + 7}\n")
    text = _cli_error([bad, "train", base_ckpt, 1, 1, 0, tmp_path], caplog)
    assert "train.tsv:2" in text and "regenerate the manifest" in text
    text = _cli_error([d, "nosuchsplit", base_ckpt, 1, 1, 0, tmp_path], caplog)
    assert "nosuchsplit.tsv does not exist" in text
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*tmp*"))


def test_too_short_utterance_is_an_error(base_ckpt, tmp_path, caplog):
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "wav" / "a.wav", np.zeros(8000, np.float32), 16000)
    sf.write(tmp_path / "wav" / "b.wav", np.zeros(300, np.float32), 16000)
    write_manifest(tmp_path / "wav", tmp_path / "m" / "train.tsv")
    text = _cli_error([tmp_path / "m", "train", base_ckpt, 1, 1, 0, tmp_path / "f"], caplog)
    assert "train.tsv:3" in text and "too short" in text


def test_not_a_checkpoint(demo_manifest, tmp_path, caplog):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint at all")
    text = _cli_error([demo_manifest, "train", tmp_path / "x.pt", 1, 1, 0, tmp_path], caplog)
    assert "is not a torch checkpoint" in text


def test_cuda_requested_without_gpu(base_ckpt, demo_manifest, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(UserError, match="no CUDA device"):
        dhf.main(str(demo_manifest), "train", str(base_ckpt), 1, 1, 0, str(tmp_path), device="cuda")
