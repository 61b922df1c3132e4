"""PASE building blocks: SincNet, encoder, workers and their targets, dataset, statistics, registry."""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_ext.data.pase_dataset import PaseChunkDataset
from fairseq_ext.models.pase import PaseConfig, PaseModel
from fairseq_ext.modules.pase_encoder import PaseEncoder
from fairseq_ext.modules.pase_workers import build_worker, import_worker_file, known_workers, register_worker
from fairseq_ext.modules.pase_workers.base import PaseBatch, RegressorConfig, RegressorWorker, frame_signal
from fairseq_ext.modules.pase_workers.fbank import log_mel_energies
from fairseq_ext.modules.pase_workers.mfcc import dct_matrix
from fairseq_ext.modules.pase_workers.prosody import estimate_f0
from fairseq_ext.modules.sincnet import SincConv1d
from fairseq_ext.pase_stats import compute_target_stats, load_target_stats
from fairseq_ext.base.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY_ENCODER = dict(sinc_filters=8, sinc_kernel_size=51, conv_channels=[8, 8, 8, 8, 8, 16, 16], emb_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def tiny_model(workers, **kw) -> PaseModel:
    cfg = PaseConfig(**{**TINY_ENCODER, **kw}, workers=workers)
    cfg.sample_rate = 16000
    return PaseModel.build_model(cfg)


def make_batch(b=2, t=4000, emb_dim=16, lengths=None, seed=0) -> PaseBatch:
    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(b, t, generator=g)
    lengths = torch.full((b,), t) if lengths is None else torch.tensor(lengths)
    wav = wav * (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1))
    n = t // 160
    emb = torch.randn(b, emb_dim, n, generator=g, requires_grad=True)
    return PaseBatch(wav=wav, wav_lengths=lengths, emb=emb, frame_lengths=lengths // 160, hop=160,
                     sample_rate=16000, pos_emb=torch.randn(b, emb_dim, n, generator=g),
                     neg_emb=torch.randn(b, emb_dim, n, generator=g), pos_frame_lengths=torch.full((b,), n),
                     neg_frame_lengths=lengths // 160)


# ---------------------------------------------------------------------------------- SincNet


def test_sinc_filters_stay_valid_band_passes_after_training():
    torch.manual_seed(0)
    sinc = SincConv1d(16, 101, 16000, min_low_hz=50, min_band_hz=50)
    opt = torch.optim.SGD(sinc.parameters(), lr=2000.0)
    x = torch.randn(4, 2000)
    for step in range(30):
        opt.zero_grad()
        low, high = sinc.cutoffs_hz()
        # push bands to collapse and to run past Nyquist, plus a data term
        loss = (high - low).sum() - high.sum() * (step % 2) + sinc(x).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        low, high = sinc.cutoffs_hz()
    assert (low >= 50 - 1e-4).all() and (high <= 8000 + 1e-4).all()
    assert (high - low >= 50 - 1e-3).all()
    filt = sinc.filters()
    assert torch.isfinite(filt).all()
    # each filter passes its centre frequency much better than DC (it is a band-pass)
    n = torch.arange(101, dtype=torch.float32) - 50
    for k in range(16):
        if low[k] < 200:
            continue
        fc = float(low[k] + high[k]) / 2
        gain_c = torch.abs((filt[k, 0] * torch.exp(-2j * math.pi * fc * n / 16000)).sum())
        gain_dc = torch.abs(filt[k, 0].sum())
        assert gain_c > 3 * gain_dc


# ---------------------------------------------------------------------------------- encoder


def test_encoder_total_stride_is_160_and_frame_count():
    enc = PaseEncoder()  # the PASE defaults
    assert enc.hop == 160
    assert [b.conv.kernel_size if isinstance(b.conv, SincConv1d) else b.conv.kernel_size[0]
            for b in enc.blocks] == [251, 20, 11, 11, 11, 11, 11, 11]
    enc.eval()
    with torch.no_grad():
        for t in (3200, 3359, 3360):
            emb, mask = enc(torch.randn(1, t))
            assert emb.shape == (1, 100, t // 160) and mask is None


@pytest.mark.parametrize("rnn", ["none", "lstm", "gru"])
def test_encoder_output_does_not_depend_on_batch_padding(rnn):
    torch.manual_seed(0)
    enc = PaseEncoder(**TINY_ENCODER, rnn_type=rnn, rnn_hidden_dim=8, rnn_bidirectional=rnn == "gru",
                      dense_skips=True)
    enc.train()
    enc(torch.randn(4, 3200))  # move BatchNorm running statistics away from their init
    enc.eval()
    wav = torch.randn(2, 4800)
    lengths = torch.tensor([4800, 2600])
    mask = torch.arange(4800).unsqueeze(0) >= lengths.unsqueeze(1)
    with torch.no_grad():
        emb, fmask = enc(wav, mask)
        alone, _ = enc(wav[1:, :2600])
    assert emb.shape == (2, 16, 30) and fmask[1].sum() == 30 - 16
    assert torch.allclose(emb[1, :, :16], alone[0], atol=1e-4)
    assert emb[1, :, 16:].abs().max() == 0


# ---------------------------------------------------------------------------------- workers

EXPECTED = {
    "lps": lambda b, n: (b, n, 129),
    "mfcc": lambda b, n: (b, n, 20),
    "fbank": lambda b, n: (b, n, 40),
    "prosody": lambda b, n: (b, n, 4),
    "waveform": lambda b, n: (b, n * 160),
    "lim": lambda b, n: (2 * b, n),
    "gim": lambda b, n: (2 * b,),
}
OPTIONS = {"lps": {"n_fft": 256, "win_length": 256}, "waveform": {"channels": [8, 8, 4]}}


def test_every_builtin_worker_is_registered():
    assert set(EXPECTED) <= set(known_workers())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_worker_target_and_prediction_shapes(name):
    worker = build_worker(name, {"hidden_dim": 32, **OPTIONS.get(name, {})}, emb_dim=16, sample_rate=16000, hop=160)
    worker.running_stats_batches = 10
    worker.train()
    batch = make_batch(lengths=[4000, 2500])
    target = worker.compute_target(batch)
    pred = worker(batch)
    assert target.shape == EXPECTED[name](2, 25) and pred.shape == target.shape
    loss, _ = worker.run(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert batch.emb.grad is not None and batch.emb.grad.abs().sum() > 0
    if name in ("lps", "mfcc", "fbank", "prosody"):
        assert torch.isfinite(target).all()
        # padded frames of the second chunk do not influence the loss
        pred2 = pred.detach().clone()
        pred2[1, 15:] += 100.0
        assert torch.isclose(worker.loss(pred2, target, batch), worker.loss(pred.detach(), target, batch))


def test_context_stacks_seven_frames():
    worker = build_worker("mfcc", {"context": 3}, emb_dim=16, sample_rate=16000, hop=160)
    worker.eval()
    batch = make_batch()
    target = worker.compute_target(batch)
    assert target.shape == (2, 25, 140) and worker(batch).shape == (2, 25, 140)
    plain = build_worker("mfcc", {}, emb_dim=16, sample_rate=16000, hop=160).compute_target(batch)
    assert torch.allclose(target[:, 10, 3 * 20: 4 * 20], plain[:, 10])  # centre = frame itself
    assert torch.allclose(target[:, 10, 0:20], plain[:, 7])


def test_fbank_and_mfcc_match_kaldi(demo_corpus):
    import kaldi_native_fbank as knf

    wav, _ = sf.read(sorted((demo_corpus / "wav").rglob("*.wav"))[0], dtype="float32")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.mel_opts.num_bins = 40
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000, wav.tolist())
    fb.input_finished()
    ref = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
    # our frame i is centred at 160 i + 80; kaldi's (snip_edges) starts at 160 i: shift by 120 samples
    ours = log_mel_energies(torch.from_numpy(wav[120:])[None], len(ref), 160, 400, 40, 16000)[0].numpy()
    assert np.abs(ours[1:] - ref[1:]).max() < 1e-2
    mopts = knf.MfccOptions()
    mopts.frame_opts.dither = 0
    mopts.mel_opts.num_bins = 40
    mopts.num_ceps = 20
    mopts.use_energy = False
    mopts.cepstral_lifter = 0
    mf = knf.OnlineMfcc(mopts)
    mf.accept_waveform(16000, wav.tolist())
    mf.input_finished()
    ref_mfcc = np.stack([mf.get_frame(i) for i in range(mf.num_frames_ready)])
    ours_mfcc = ours @ dct_matrix(40, 20).numpy()
    assert np.abs(ours_mfcc[1:] - ref_mfcc[1:]).max() < 2e-2


def test_f0_estimator_on_demo_corpus(demo_corpus):
    ref = {}
    for line in open(demo_corpus / "f0.tsv"):
        uid, vals = line.rstrip("\n").split("\t")
        ref[uid] = np.array([float(v) for v in vals.split(",")])
    frames = voicing_err = voiced_both = gross = 0
    for path in sorted((demo_corpus / "wav").rglob("*.wav")):
        wav, _ = sf.read(path, dtype="float32")
        n = len(wav) // 160
        f0, voiced = estimate_f0(torch.from_numpy(wav)[None], n, 160, 16000)
        f0, voiced, r = f0[0].numpy(), voiced[0].numpy(), ref[path.stem][:n]
        frames += n
        voicing_err += int((voiced != (r > 0)).sum())
        both = voiced & (r > 0)
        voiced_both += int(both.sum())
        gross += int((np.abs(f0[both] / r[both] - 1) > 0.2).sum())
    assert voicing_err / frames < 0.08
    assert gross / voiced_both < 0.05


def test_prosody_targets_finite_on_silence():
    worker = build_worker("prosody", {}, emb_dim=16, sample_rate=16000, hop=160)
    batch = make_batch()
    batch.wav = torch.zeros_like(batch.wav)
    raw = worker.compute_raw_target(batch)
    assert torch.isfinite(raw).all()
    assert (raw[..., 1] == 0).all()  # unvoiced
    assert torch.allclose(raw[..., 0], torch.full_like(raw[..., 0], math.log(60.0)))


def test_silent_and_padded_chunks_give_finite_losses():
    torch.manual_seed(0)
    model = tiny_model({"lps": {"n_fft": 256, "win_length": 256}, "mfcc": {}, "fbank": {}, "prosody": {},
                        "waveform": {"channels": [8, 8, 4]}, "lim": {}, "gim": {}}, running_stats_batches=5)
    model.train()
    src = torch.zeros(3, 4000)
    src[1] = 0.1 * torch.randn(4000)
    mask = torch.zeros(3, 4000, dtype=torch.bool)
    mask[2, 1000:] = True
    out = model(src, mask, positive=torch.zeros(3, 4000), negative=0.1 * torch.randn(3, 4000))
    assert set(out["losses"]) == {"lps", "mfcc", "fbank", "prosody", "waveform", "lim", "gim"}
    for name, loss in out["losses"].items():
        assert torch.isfinite(loss), name
    assert out["frame_lengths"].tolist() == [25, 25, 6]


# ---------------------------------------------------------------------------------- registry


def test_unknown_worker_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown PASE worker 'nope'.*known workers: .*lps.*prosody"):
        build_worker("nope", {}, emb_dim=16, sample_rate=16000, hop=160)
    with pytest.raises(ValueError, match="known workers"):
        tiny_model({"mfcc": {}, "nope": {}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) n_ffft.*valid options: .*n_fft"):
        build_worker("lps", {"n_ffft": 512}, emb_dim=16, sample_rate=16000, hop=160)
    with pytest.raises(ValueError, match="lists no worker"):
        tiny_model({"mfcc": None})
    with pytest.raises(ValueError, match="must be a mapping"):
        tiny_model({"mfcc": 3})


def test_worker_type_alias_and_disabled_entry():
    model = tiny_model({"mfcc": {}, "mfcc_long": {"type": "mfcc", "win_length": 3200}, "lps": None})
    assert list(model.workers) == ["mfcc", "mfcc_long"]
    assert model.workers["mfcc_long"].cfg.win_length == 3200


@dataclass
class _ZcrConfig(RegressorConfig):
    win_length: int = 400


@register_worker("test_zcr", dataclass=_ZcrConfig)
class _ZcrWorker(RegressorWorker):
    def __init__(self, name, cfg, emb_dim, sample_rate, hop):
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=1)

    @torch.no_grad()
    def compute_raw_target(self, batch):
        frames = frame_signal(batch.wav.float(), batch.num_frames, self.hop, self.cfg.win_length)
        return ((frames[..., 1:] * frames[..., :-1]) < 0).float().mean(-1, keepdim=True)


def test_registered_new_worker_trains():
    torch.manual_seed(0)
    assert "test_zcr" in known_workers()
    model = tiny_model({"test_zcr": {"weight": 1.0, "hidden_dim": 16}}, running_stats_batches=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    # white noise and low-passed noise: different zero-crossing rates to learn
    noise = torch.randn(8, 3200, generator=g)
    smooth = torch.nn.functional.avg_pool1d(torch.randn(8, 1, 3200 + 15, generator=g), 16, 1).squeeze(1)
    wav = torch.cat([noise, smooth]) * 0.1
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = model(wav)["losses"]["test_zcr"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert int(model.workers["test_zcr"].stats_batches) == 3
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[3:8])


def test_worker_file_registration(tmp_path):
    path = tmp_path / "my_worker.py"
    path.write_text(textwrap.dedent('''
        import torch
        from fairseq_ext.modules.pase_workers import register_worker
        from fairseq_ext.modules.pase_workers.base import RegressorConfig, RegressorWorker

        @register_worker("test_file_worker", dataclass=RegressorConfig)
        class FileWorker(RegressorWorker):
            def __init__(self, name, cfg, emb_dim, sample_rate, hop):
                super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=2)

            def compute_raw_target(self, batch):
                return batch.wav.new_zeros(batch.wav.size(0), batch.num_frames, 2)
    '''))
    model = tiny_model({"test_file_worker": {}}, worker_files=[str(path)])
    assert model.workers["test_file_worker"].target_dim == 2
    import_worker_file(str(path))  # idempotent
    with pytest.raises(FileNotFoundError):
        import_worker_file(str(tmp_path / "missing.py"))


# ---------------------------------------------------------------------------------- data


def _write(path: Path, wav: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, 16000, subtype="FLOAT")


def test_dataset_short_utterances_pad_or_skip(tmp_path):
    rng = np.random.default_rng(0)
    lengths = {"a": 6000, "b": 2000, "c": 900, "d": 5000}
    for name, n in lengths.items():
        _write(tmp_path / "wav" / f"{name}.wav", 0.1 * rng.standard_normal(n).astype(np.float32))
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{tmp_path / 'wav'}\n" + "".join(f"{k}.wav\t{n}\n" for k, n in lengths.items()))
    ds = PaseChunkDataset(str(tsv), chunk_size=4000, short_utterances="pad", min_sample_size=1000)
    assert len(ds) == 3  # "c" is below min_sample_size
    batch = ds.collater([ds[i] for i in range(len(ds))])
    net = batch["net_input"]
    assert net["source"].shape == (3, 4000)
    assert (~net["padding_mask"]).sum(1).tolist() == [4000, 2000, 4000]
    assert net["source"][1, 2000:].abs().max() == 0
    assert net["positive"].shape == net["negative"].shape == (3, 4000)
    assert {ds[i]["negative_id"] for i in range(3) for _ in range(1)} <= {0, 1, 2}
    assert all(ds[i]["negative_id"] != i for i in range(3))
    skip = PaseChunkDataset(str(tsv), chunk_size=4000, short_utterances="skip")
    assert len(skip) == 2
    with pytest.raises(UserError, match="no utterance is long enough"):
        PaseChunkDataset(str(tsv), chunk_size=7000, short_utterances="skip")
    # chunks are reproducible for a given epoch and change across epochs (training)
    ds.set_epoch(1)
    a = ds[0]["source"]
    assert torch.equal(a, ds[0]["source"])
    ds.set_epoch(2)
    assert not torch.equal(a, ds[0]["source"])


def test_dataset_negatives_come_from_other_speakers(demo_manifest, demo_corpus):
    from fairseq_ext.data.pase_dataset import read_speaker_file

    speakers = read_speaker_file(str(demo_corpus / "speakers.tsv"))
    ds = PaseChunkDataset(str(demo_manifest / "train.tsv"), chunk_size=4000, speakers=speakers)
    uids = [ds.manifest.uid(e) for e in ds.entries]
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            assert speakers[uids[ds[i]["negative_id"]]] != speakers[uids[i]]


# ---------------------------------------------------------------------------------- statistics


def test_stats_computation_and_loading(demo_manifest, tmp_path):
    out = tmp_path / "stats.json"
    compute_target_stats(str(demo_manifest), str(out), str(REPO / "config/pretrain/pase_tiny.yaml"),
                         overrides=["+model.workers.fbank={}"])
    stats = json.loads(out.read_text())
    assert {k: v["dim"] for k, v in stats["workers"].items()} == {"lps": 129, "mfcc": 20, "prosody": 4, "fbank": 40}
    assert all(min(v["std"]) > 0 for v in stats["workers"].values())
    model = tiny_model({"mfcc": {}, "prosody": {}}, target_stats=str(out))
    model.eval()
    model(0.1 * torch.randn(2, 3200))  # loads the file on the first forward
    w = model.workers["prosody"]
    assert int(w.stats_source) == 1 and torch.allclose(w.target_mean, torch.tensor(stats["workers"]["prosody"]["mean"]))
    with pytest.raises(UserError, match="were computed with"):
        tiny_model({"mfcc": {"n_mfcc": 13}}, target_stats=str(out))(torch.randn(1, 3200))
    with pytest.raises(UserError, match="no statistics for worker 'lps_long'"):
        load_target_stats(str(out), {"lps_long": build_worker("lps_long", {"type": "lps"}, 16, 16000, 160)})
    with pytest.raises(UserError, match="does not exist"):
        tiny_model({"mfcc": {}}, target_stats=str(tmp_path / "missing.json"))(torch.randn(1, 3200))
