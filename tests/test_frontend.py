"""Trainable log-Mel front-end: DFT/Mel bases, settings A-D, Mel basis kept in [0, 1], band mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairseq_ext.modules.frontend import (
    SETTINGS, LogMelFrontend, dft_kernels, frontend_setting, hz_to_mel, mel_filterbank, mel_to_hz,
)


def test_fixed_stft_basis_is_the_power_stft():
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 8000, generator=g)
    fe = LogMelFrontend()
    power = fe.power_spectrogram(wav)
    ref = torch.stft(wav, 480, 160, window=torch.hann_window(480), center=True, pad_mode="constant",
                     return_complex=True).abs() ** 2
    assert power.shape == ref.shape == (2, 241, 51)
    assert ((power - ref).abs().max() / ref.abs().max()) < 1e-5
    assert dft_kernels(480).shape == (482, 1, 480)


def test_mel_scales_match_the_standard_formulas():
    assert np.isclose(hz_to_mel(1000.0, "slaney"), 15.0)
    assert np.isclose(hz_to_mel(440.0, "slaney"), 6.6)
    assert np.isclose(hz_to_mel(440.0, "htk"), 549.6387, atol=1e-3)
    assert np.isclose(hz_to_mel(700.0, "htk"), 2595 * np.log10(2))
    f = np.array([0.0, 300.0, 1000.0, 4321.0, 8000.0])
    for scale in ("htk", "slaney"):
        assert np.allclose(mel_to_hz(hz_to_mel(f, scale), scale), f)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_filterbank_triangles(scale):
    fb = mel_filterbank(16000, 480, 40, scale=scale)
    assert fb.shape == (241, 40)
    assert fb.min() >= 0 and fb.max() <= 1
    centres = np.argmax(fb, axis=0)
    assert np.all(np.diff(centres) >= 0)  # centres rise with the filter index
    assert np.all(fb.max(0) > 0.5)  # every filter catches bins near its peak
    normed = mel_filterbank(16000, 480, 40, scale=scale, norm="slaney")
    assert np.allclose(normed / normed.max(0), fb / fb.max(0), atol=1e-6)  # same shapes, scaled
    with pytest.raises(ValueError):
        mel_filterbank(16000, 480, 40, f_max=9000)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_settings_a_to_d_train_the_right_bases(setting):
    trainable_stft, trainable_mel = SETTINGS[setting]
    torch.manual_seed(0)
    fe = LogMelFrontend(n_mels=20, trainable_stft=trainable_stft, trainable_mel=trainable_mel)
    assert frontend_setting(trainable_stft, trainable_mel) == setting
    head = torch.nn.Linear(20, 1)  # a trained layer after the front-end, as in the model
    feats, _ = fe(0.1 * torch.randn(2, 3200))
    head(feats).mean().backward()
    assert head.weight.grad is not None
    got_stft = fe.stft_kernel.grad is not None and fe.stft_kernel.grad.abs().sum() > 0
    got_mel = fe.mel_basis.grad is not None and fe.mel_basis.grad.abs().sum() > 0
    assert (got_stft, got_mel) == (trainable_stft, trainable_mel)
    trainable = {n for n, p in fe.named_parameters() if p.requires_grad}
    assert trainable == {n for n, on in (("stft_kernel", trainable_stft), ("mel_basis", trainable_mel)) if on}


def test_mel_basis_stays_in_unit_interval_after_updates():
    torch.manual_seed(0)
    fe = LogMelFrontend(n_mels=16, trainable_mel=True)
    opt = torch.optim.SGD([fe.mel_basis], lr=50.0)
    wav = 0.1 * torch.randn(2, 3200)
    for sign in (1.0, -1.0, 1.0):  # push the basis both ways, hard
        opt.zero_grad()
        (sign * fe(wav)[0].mean()).backward()
        opt.step()
        fe.clamp_mel_()
        assert fe.mel_basis.min() >= 0.0 and fe.mel_basis.max() <= 1.0
    init = torch.from_numpy(mel_filterbank(16000, 480, 16))
    assert (fe.mel_basis - init).abs().max() > 1e-3  # it did train
    # the forward pass never uses values outside [0, 1], even if the stored basis was edited
    with torch.no_grad():
        fe.mel_basis.fill_(-1.0)
    assert torch.allclose(fe(wav)[0], torch.log(torch.tensor(1e-10)), atol=1e-3)


def test_random_init_and_maskout_band():
    torch.manual_seed(0)
    fe = LogMelFrontend(n_mels=30, mel_init="random", maskout_start=5, maskout_end=9)
    assert fe.mel_basis.min() >= 0 and fe.mel_basis.max() <= 1
    assert fe.mel_basis.std() > 0.1
    feats, _ = fe(0.1 * torch.randn(1, 3200))
    assert torch.all(feats[..., 5:9] == 0)
    assert torch.all(feats[..., :5] != 0) and torch.all(feats[..., 9:] != 0)
    with pytest.raises(ValueError, match="maskout"):
        LogMelFrontend(n_mels=30, maskout_start=10, maskout_end=40)
    with pytest.raises(ValueError, match="mel_init"):
        LogMelFrontend(mel_init="bark")


def test_frames_do_not_depend_on_batch_padding():
    fe = LogMelFrontend()
    wav = 0.1 * torch.randn(5000)
    alone, mask_alone = fe(wav[None])
    batch = torch.zeros(2, 9000)
    batch[0, :5000] = wav
    batch[1] = 0.1 * torch.randn(9000)
    pad = torch.zeros(2, 9000, dtype=torch.bool)
    pad[0, 5000:] = True
    feats, mask = fe(batch, pad)
    n = 5000 // 160 + 1
    assert alone.shape[1] == n and mask_alone is None
    assert int((~mask[0]).sum()) == n and not mask[1].any()
    assert (feats[0, :n] - alone[0]).abs().max() < 1e-4
