"""Tests of how dhubert's forward does HuBERT's steps itself: the same outputs as fairseq's
HubertModel.forward, fairseq's seeded span masks through the overridden apply_mask, and the
adversary memory that the model fills from the speaker ids it is given."""

from __future__ import annotations

import torch

import fairseq_ext
fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
from test_dhubert_model import build, fixed_masks, task_and_batch  # noqa: F401  (fixtures)


def test_forward_matches_hubert_forward(task_and_batch):  # noqa: F811
    """Without heads, dhubert's own forward (which keeps the encoder's layer results and passes
    speakers to the prediction head) gives exactly fairseq HubertModel.forward's outputs."""
    from fairseq.models.hubert.hubert import HubertModel

    task, batch = task_and_batch
    model = build(task, spk_layer=0, pitch_layer=0, dropout=0.1, dropout_input=0.1, dropout_features=0.1).train()
    outs = []
    for forward in (model.forward, lambda **kw: HubertModel.forward(model, **kw)):
        model.set_num_updates(3)  # the same seeded masks
        torch.manual_seed(5)  # the same dropout draws
        outs.append(forward(target_list=batch["target_list"], **batch["net_input"]))
    ours, ref = outs
    assert set(ours) == set(ref)
    for key in ("logit_m_list", "logit_u_list"):
        for a, b in zip(ours[key], ref[key]):
            assert torch.equal(a, b), key
    assert torch.equal(ours["padding_mask"], ref["padding_mask"]) and torch.equal(ours["features_pen"], ref["features_pen"])


def test_seeded_masks_are_fairseqs_seeded_masks(task_and_batch):  # noqa: F811
    """The masks are fairseq's compute_mask_indices with seed, epoch = key, indices = rows (what
    the earlier mechanism, which swapped the module function, drew): reruns of old runs match."""
    from fairseq.data.data_utils import compute_mask_indices

    task, batch = task_and_batch
    model = build(task).train()
    model.set_num_updates(7)
    x = torch.randn(4, 30, 32)
    pad = torch.zeros(4, 30, dtype=torch.bool)
    pad[1, 20:] = True
    _, got = model.apply_mask(x.clone(), pad, None)
    expected = compute_mask_indices((4, 30), pad, model.mask_prob, model.mask_length, model.mask_selection,
                                    model.mask_other, min_masks=2, no_overlap=model.no_mask_overlap,
                                    min_space=model.mask_min_space, seed=1, epoch=7 * 4096, indices=torch.arange(4))
    assert torch.equal(got, torch.from_numpy(expected))


def test_model_fills_its_memory_from_the_speakers_it_is_given(task_and_batch, fixed_masks):  # noqa: F811
    """The model owns its memory: a training forward given spk_id pushes the batch (after taking the
    memory's logits); without spk_id, or in evaluation, nothing changes."""
    task, batch = task_and_batch
    model = build(task, spk_memory_size=64, pitch_layer=0)
    n_utts = batch["id"].numel()
    fwd = dict(target_list=batch["target_list"], **batch["net_input"])
    model(**fwd)
    assert len(model.spk_memory) == 0
    out = model(**fwd, spk_id=batch["spk_id"])
    assert "spk_memory_logits" not in out and len(model.spk_memory) == n_utts
    assert torch.equal(model.spk_memory.get()[0], out["spk_embedding"].detach())
    out = model(**fwd, spk_id=batch["spk_id"])
    assert out["spk_memory_logits"].shape == (n_utts, len(task.speakers)) and len(model.spk_memory) == 2 * n_utts
    model.eval()
    model(**fwd, spk_id=batch["spk_id"])
    assert len(model.spk_memory) == 2 * n_utts
