"""CTC head: shapes, weighted layer sum, padding independence (batched = single within 1e-5), and a
falling CTC loss on a toy phone problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fairseq_ext.modules.ctc_head import CTCHead, CTCHeadConfig
from fairseq_ext.modules.layer_sum import WeightedLayerSum
from fairseq_ext.phone_error import ctc_greedy_decode, phone_errors

L, C, V = 3, 8, 6


def padded_batch(lengths, seed=0):
    """``L`` hidden states ``(B, T, C)`` with random values everywhere (padding too) and the padding mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    states = [torch.randn(len(lengths), T, C, generator=g) * (i + 1) for i in range(L)]
    mask = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]
    return states, mask


@pytest.mark.parametrize("lstm_layers", [0, 1, 2])
def test_shapes_for_list_and_stacked_inputs(lstm_layers):
    torch.manual_seed(0)
    head = CTCHead(C, L, V, lstm_layers=lstm_layers, lstm_hidden=5).eval()
    states, mask = padded_batch([7, 4, 5])
    lp, lengths = head(states, mask)
    assert lp.shape == (3, 7, V) and lp.dtype == torch.float32
    assert lengths.tolist() == [7, 4, 5]
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 7), atol=1e-5)
    lp2, _ = head(torch.stack(states), mask)
    assert torch.equal(lp, lp2)
    lp3, lengths3 = head(states)
    assert lengths3.tolist() == [7, 7, 7] and lp3.shape == lp.shape
    assert (head.lstm is None) == (lstm_layers == 0)


@pytest.mark.parametrize("lstm_layers, layer, layer_norm",
                         [(0, -1, False), (1, -1, True), (2, -1, False), (1, 2, False)])
def test_padding_does_not_change_valid_outputs(lstm_layers, layer, layer_norm):
    torch.manual_seed(0)
    head = CTCHead(C, L, V, layer=layer, layer_norm=layer_norm, lstm_layers=lstm_layers, lstm_hidden=5).eval()
    with torch.no_grad():
        if head.layer_sum.weights is not None:
            head.layer_sum.weights.copy_(torch.tensor([0.3, -0.2, 0.5]))
    lengths = [9, 4, 6]
    states, mask = padded_batch(lengths)
    with torch.no_grad():
        batched, _ = head(states, mask)
        for b, n in enumerate(lengths):
            single, n_out = head([s[b:b + 1, :n] for s in states], None)
            assert n_out.tolist() == [n]
            assert torch.allclose(batched[b, :n], single[0], atol=1e-5), (b, (batched[b, :n] - single[0]).abs().max())
        # changing the padded frames' values changes nothing valid
        noisy = [s.masked_fill(mask[..., None], 1e3) for s in states]
        again, _ = head(noisy, mask)
    for b, n in enumerate(lengths):
        assert torch.allclose(again[b, :n], batched[b, :n], atol=1e-5)


def test_weighted_sum_and_single_layer():
    states, _ = padded_batch([4, 4])
    ws = WeightedLayerSum(L)
    assert torch.allclose(ws(states), sum(states) / L, atol=1e-6)  # equal weights at the start
    with torch.no_grad():
        ws.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert torch.allclose(ws.normalized_weights(), w)
    assert torch.allclose(ws(torch.stack(states)), sum(wi * s for wi, s in zip(w, states)), atol=1e-5)
    ws(states).sum().backward()
    assert ws.weights.grad is not None and ws.weights.grad.abs().sum() > 0
    one = WeightedLayerSum(L, layer=1)
    assert torch.equal(one(states), states[1]) and one.weights is None
    assert one.normalized_weights().tolist() == [0.0, 1.0, 0.0]
    assert not list(one.parameters())
    with pytest.raises(ValueError):
        WeightedLayerSum(L, layer=L)
    with pytest.raises(ValueError):
        ws(states[:2])


def test_build_from_config_and_bad_arguments():
    cfg = CTCHeadConfig(layer=0, lstm_layers=0)
    head = CTCHead.build(cfg, input_dim=C, num_hidden_states=L, num_classes=V)
    assert head.lstm is None and head.proj.in_features == C and head.layer_sum.layer == 0
    assert CTCHeadConfig().layer == -1
    states, mask = padded_batch([3, 2])
    with pytest.raises(ValueError):
        head(states, mask[:, :2])
    with pytest.raises(ValueError):
        CTCHead(C, L, 1)


def test_ctc_loss_is_finite_and_falls_on_a_toy_problem():
    """Each phone is a fixed random direction in every layer's frames (held 2-4 frames, with noise): the head
    must learn to read it out; the CTC loss falls and greedy decoding then beats the untrained PER."""
    torch.manual_seed(0)
    n_phones, B = V - 1, 8  # classes 1..5 are phones, 0 is the blank
    proto = torch.randn(n_phones + 1, C)
    targets, inputs, lengths = [], [], []
    for _ in range(B):
        phones = torch.randint(1, n_phones + 1, (int(torch.randint(3, 6, ())),))
        frames = torch.cat([proto[p].repeat(int(torch.randint(2, 5, ())), 1) for p in phones])
        targets.append(phones)
        inputs.append(frames + 0.3 * torch.randn_like(frames))
        lengths.append(len(frames))
    T = max(lengths)
    x = torch.zeros(B, T, C)
    for b, f in enumerate(inputs):
        x[b, : len(f)] = f
    states = [x * (i + 1) for i in range(L)]
    mask = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]
    flat, target_lengths = torch.cat(targets), torch.tensor([len(t) for t in targets])

    head = CTCHead(C, L, V, lstm_layers=1, lstm_hidden=16, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    try:
        for _ in range(30):
            lp, out_lengths = head(states, mask)
            loss = F.ctc_loss(lp.transpose(0, 1), flat, out_lengths, target_lengths, blank=0, reduction="mean")
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.2 * losses[0], losses[::5]
    with torch.no_grad():
        hyps = ctc_greedy_decode(head.eval()(states, mask)[0], mask, blank=0)
    assert phone_errors([t.tolist() for t in targets], hyps).per < 0.25
