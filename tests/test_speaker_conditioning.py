"""Tests of speaker-conditioned masked prediction (``model.spk_condition``)."""

from __future__ import annotations

import pytest
import torch

import fairseq_ext
fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
from fairseq_ext.criteria.dhubert import DHubertCriterion
from test_dhubert_model import build, fixed_masks, task_and_batch  # noqa: F401  (fixtures)


def _forward(model, batch, spk_id=None):
    return model(target_list=batch["target_list"], **batch["net_input"], spk_id=spk_id)


def test_conditioning_starts_as_hubert_and_adds_each_rows_speaker(task_and_batch, fixed_masks):  # noqa: F811
    task, batch = task_and_batch
    spk = batch["spk_id"]
    model = build(task, spk_condition=True, pitch_layer=0).eval()
    plain = build(task, spk_condition=False, pitch_layer=0).eval()
    with torch.no_grad():
        a, b = _forward(model, batch, spk), _forward(plain, batch)
        assert torch.allclose(a["logit_m_list"][0], b["logit_m_list"][0], atol=1e-6)  # zero-initialised
        emb = model.spk_cond.embedding.weight
        emb.copy_(torch.randn_like(emb))
        seen = []
        model.final_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
        out = _forward(model, batch, spk)
    pad, mask = out["padding_mask"], torch.zeros_like(out["padding_mask"])
    mask[:, ::3] = True  # fixed_masks
    masked_rows = (~pad & mask).nonzero()[:, 0]
    unmasked_rows = (~pad & ~mask).nonzero()[:, 0]
    with torch.no_grad():  # the encoder output is unchanged: the rows differ by the speaker embedding only
        x = plain.extract_features(batch["net_input"]["source"], batch["net_input"]["padding_mask"], mask=True)[0]
    assert len(seen) == 2
    for rows, owner, sel in ((seen[0], masked_rows, ~pad & mask), (seen[1], unmasked_rows, ~pad & ~mask)):
        assert torch.allclose(rows - emb[spk[owner]], x[sel], atol=1e-5)
    # without speaker ids (and in extract_features) nothing is added
    with torch.no_grad():
        none = _forward(model, batch)
    assert torch.allclose(none["logit_m_list"][0], b["logit_m_list"][0], atol=1e-6)
    feats = model.extract_features(batch["net_input"]["source"], batch["net_input"]["padding_mask"], mask=False)[0]
    ref = plain.extract_features(batch["net_input"]["source"], batch["net_input"]["padding_mask"], mask=False)[0]
    assert torch.allclose(feats, ref, atol=1e-6)


def test_criterion_passes_speakers_and_embedding_learns(task_and_batch, fixed_masks):  # noqa: F811
    task, batch = task_and_batch
    model = build(task, spk_condition=True, pitch_layer=0)
    crit = DHubertCriterion(task, 1.0, 0.0, [10.0], spk_weight=1.0)
    loss, _, _ = crit(model, batch)
    loss.backward()
    grad = model.spk_cond.embedding.weight.grad
    used = batch["spk_id"].unique()
    assert grad[used].abs().sum() > 0
    unused = torch.ones(grad.size(0), dtype=torch.bool)
    unused[used] = False
    assert grad[unused].abs().sum() == 0
    model.eval()  # nothing is left for the next forward: without speaker ids it predicts unconditioned
    with torch.no_grad():
        model.spk_cond.embedding.weight.normal_()
        plain = build(task, spk_condition=False, pitch_layer=0).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("spk_cond.")})
        a, b = _forward(model, batch), _forward(plain, batch)
    assert torch.allclose(a["logit_m_list"][0], b["logit_m_list"][0], atol=1e-6)


@pytest.mark.parametrize("skip_masked", [False, True])
def test_conditioning_follows_rows_not_call_order(task_and_batch, fixed_masks, skip_masked):  # noqa: F811
    """compute_logits gets the speakers with the rows it predicts: the unmasked frames' logits are
    the same whether or not the masked frames are predicted first (skip_masked)."""
    task, batch = task_and_batch
    model = build(task, spk_condition=True, pitch_layer=0).eval()
    with torch.no_grad():
        model.spk_cond.embedding.weight.normal_()
        ref = _forward(model, batch, batch["spk_id"])
        model.skip_masked, model.skip_nomask = skip_masked, False
        out = _forward(model, batch, batch["spk_id"])
        # a different speaker for the same rows changes them: the ids are really used
        other = _forward(model, batch, (batch["spk_id"] + 1) % len(task.speakers))
    assert torch.allclose(out["logit_u_list"][0], ref["logit_u_list"][0], atol=1e-6)
    assert (out["logit_m_list"][0] is None) == skip_masked
    assert not torch.allclose(other["logit_u_list"][0], ref["logit_u_list"][0], atol=1e-3)


def test_conditioning_needs_speakers(task_and_batch):  # noqa: F811
    from fairseq_ext.models.dhubert import DHubertConfig, DHubertModel
    from test_dhubert_model import TINY

    task, _ = task_and_batch
    cfg = DHubertConfig(**{**TINY, "spk_condition": True, "spk_layer": 0, "pitch_layer": 0})
    with pytest.raises(ValueError, match="spk_condition"):
        DHubertModel(cfg, task.cfg, task.dictionaries, n_speakers=0)
