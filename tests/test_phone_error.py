"""PER of known strings and greedy CTC decoding (repeats collapsed, blanks dropped, padded frames ignored)."""

from __future__ import annotations

import math

import pytest
import torch

from fairseq_ext.phone_error import PhoneErrors, ctc_greedy_decode, edit_distance, phone_errors


def frames_to_log_probs(rows, V, pad_to=None, pad_class=None):
    """(B, T, V) log-probs whose argmax per frame is ``rows[b][t]`` (rows padded to ``pad_to`` with ``pad_class``)."""
    T = pad_to or max(len(r) for r in rows)
    x = torch.full((len(rows), T, V), -5.0)
    for b, r in enumerate(rows):
        for t in range(T):
            x[b, t, r[t] if t < len(r) else pad_class] = -0.1
    return torch.log_softmax(x, dim=-1)


def test_edit_distance_of_known_strings():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("sil k ae t sil".split(), "sil k ah t".split()) == 2  # one substitution, one deletion
    assert edit_distance([], ["a", "b"]) == 2 and edit_distance(["a"], ["a"]) == 0
    assert edit_distance([4, 5, 6], [4, 9, 5, 6]) == 1  # an insertion


def test_per_pools_errors_over_utterances():
    refs = ["a b c".split(), ["d"]]
    hyps = [["a", "c"], ["d", "e"]]
    e = phone_errors(refs, hyps)
    assert (e.errors, e.ref_phones) == (2, 4) and e.per == pytest.approx(0.5)
    total = e + phone_errors([["x", "y"]], [["y", "x"]])
    assert (total.errors, total.ref_phones, total.per) == (4, 6, pytest.approx(4 / 6))
    assert phone_errors(refs, refs).per == 0.0
    assert math.isnan(PhoneErrors().per)
    with pytest.raises(ValueError):
        phone_errors(refs, hyps[:1])


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    lp = frames_to_log_probs([[1, 1, 0, 1, 2, 2, 0, 0], [0, 3, 3, 3, 0, 0, 0, 0]], V=4)
    assert ctc_greedy_decode(lp) == [[1, 1, 2], [3]]
    assert ctc_greedy_decode(lp, blank=3) == [[1, 0, 1, 2, 0], [0, 0]]  # 0 3 0: the blank separates two 0s


def test_greedy_decoding_ignores_padded_frames():
    rows = [[2, 2, 0, 1], [1, 0, 1]]
    lp = frames_to_log_probs(rows, V=4, pad_to=6, pad_class=3)  # padding frames say class 3
    mask = torch.tensor([[False] * 4 + [True] * 2, [False] * 3 + [True] * 3])
    assert ctc_greedy_decode(lp, mask) == [[2, 1], [1, 1]]
    assert ctc_greedy_decode(lp) == [[2, 1, 3], [1, 1, 3]]  # without the mask the padding leaks in
    with pytest.raises(ValueError):
        ctc_greedy_decode(lp, mask[:, :5])


def test_per_of_decoded_batch():
    lp = frames_to_log_probs([[1, 0, 2, 2, 3], [2, 2, 0, 2, 0]], V=4)
    hyps = ctc_greedy_decode(lp)
    assert hyps == [[1, 2, 3], [2, 2]]
    assert phone_errors([[1, 2, 3], [2, 1]], hyps).per == pytest.approx(1 / 5)
