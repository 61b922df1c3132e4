"""Tests of the dhubert model, its GRL, schedules, masked pooling and the summable criteria."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fairseq_ext
fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
from fairseq_ext.criteria.dhubert import DHubertCriterion
from fairseq_ext.criteria.hubert_summable import HubertSummableCriterion
from fairseq_ext.models.dhubert import DHubertConfig, DHubertModel
from fairseq_ext.modules.grl import GradientReversal, reverse_grad, scheduled_weight
from fairseq_ext.modules.pooling import POOLING_CHOICES, MeanPooling, build_pooling
from fairseq_ext.modules.running_standardize import RunningStandardize
from fairseq_ext.modules.speaker_memory import SpeakerMemory
from test_dhubert_data import make_task, position_corpus

TINY = dict(label_rate=100.0, max_update=100, encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
            encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4, final_dim=16,
            conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
            dropout_features=0.0, head_dropout=0.0, spk_hidden_dim=16, pitch_hidden_dim=16, mask_length=3,
            spk_layer=1, pitch_layer=2, adv_schedule="constant", adv_weight=0.5, mask_seed=1,
            # the utterance-level gradient-reversal adversary without conditioning (the defaults are
            # the frame-level confusion adversary with conditioning: tested in test_speaker_*.py)
            spk_unit="utterance", spk_adversary="reverse", spk_condition=False, spk_memory_size=256)


@pytest.fixture(scope="module")
def task_and_batch(tmp_path_factory):
    torch.manual_seed(0)
    np.random.seed(0)
    paths = position_corpus(tmp_path_factory.mktemp("dh_model"), [9600, 12800, 16000, 11200])
    task = make_task(paths, max_sample_size=12000, pad_audio=True)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(len(ds))])
    batch["net_input"]["source"] = torch.randn_like(batch["net_input"]["source"]) * 0.1  # real-ish audio
    return task, batch


@pytest.fixture
def fixed_masks(monkeypatch):
    """Deterministic HuBERT masks: every 3rd frame (seeded masks and fairseq's unseeded ones)."""
    import fairseq.models.hubert.hubert as hubert

    from fairseq_ext.modules import seeded_masks

    def masks(shape, padding_mask, *args, **kwargs):
        m = np.zeros(shape, dtype=bool)
        m[:, ::3] = True
        return m

    monkeypatch.setattr(hubert, "compute_mask_indices", masks)
    monkeypatch.setattr(seeded_masks, "compute_mask_indices", masks)


def build(task, **kw) -> DHubertModel:
    torch.manual_seed(0)
    return DHubertModel.build_model(DHubertConfig(**{**TINY, **kw}), task)


def test_shapes_and_hubert_compatible_outputs(task_and_batch):
    task, batch = task_and_batch
    model = build(task)
    out = model(target_list=batch["target_list"], **batch["net_input"])
    B, T = out["padding_mask"].shape
    assert out["spk_logits"].shape == (B, len(task.speakers))
    assert out["pitch_pred"].shape == (B, T, 2)
    assert out["adv_weight"] == pytest.approx(0.5)
    assert out["logit_m_list"][0].dim() == 2 and torch.isfinite(out["features_pen"])
    feats, pad = model.extract_features(batch["net_input"]["source"], batch["net_input"]["padding_mask"],
                                        mask=False, output_layer=2)
    assert feats.shape == (B, pad.size(1), 32)


def test_heads_read_their_layer_in_one_encoder_pass(task_and_batch):
    """The heads get the encoder's output at layer k, and each layer runs once per forward."""
    task, batch = task_and_batch
    model = build(task).eval()
    seen, calls = {}, []
    model.spk_head.pool.register_forward_hook(lambda m, a, o: seen.__setitem__("spk", a[0]))
    model.pitch_head.register_forward_hook(lambda m, a, o: seen.__setitem__("pitch", a[0]))
    model.encoder.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("enc_in", (a, kw)), with_kwargs=True)
    for layer in model.encoder.layers:
        layer.register_forward_hook(lambda m, a, o: calls.append(m))
    with torch.no_grad():
        model(target_list=batch["target_list"], **batch["net_input"])
        assert len(calls) == len(model.encoder.layers)
        (x,), kw = seen["enc_in"]
        for name, layer in (("spk", 1), ("pitch", 2)):
            ref, _ = model.encoder(x, padding_mask=kw["padding_mask"], layer=layer - 1)
            assert seen[name].shape == ref.shape
            assert torch.allclose(seen[name], ref, atol=1e-5), name
    assert not torch.allclose(seen["spk"], seen["pitch"])


def seed_for_layers(kept, layerdrop):
    """A NumPy seed whose next len(kept) draws keep exactly the layers marked True (fairseq keeps a
    layer when np.random.random() > layerdrop)."""
    for seed in range(10_000):
        draws = np.random.RandomState(seed).random_sample(len(kept))
        if [bool(d > layerdrop) for d in draws] == list(kept):
            return seed
    raise AssertionError(kept)


@pytest.mark.parametrize("kept", [[True, False, True], [True, False, False], [False, True, True],
                                  [False, False, True]])
def test_layerdrop_uses_state_after_dropped_layer(task_and_batch, kept):
    """If LayerDrop skips the head's layer, the head gets the output of the last earlier layer that
    ran (the next layer's input), and if none ran, the encoder output."""
    task, batch = task_and_batch
    model = build(task, spk_layer=2).train()
    model.encoder.layerdrop = 0.5
    seen, inputs = {}, {}
    model.spk_head.pool.register_forward_hook(lambda m, a, o: seen.__setitem__("spk", a[0]))
    for i, layer in enumerate(model.encoder.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
    model.encoder.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o[0]))
    np.random.seed(seed_for_layers(kept, 0.5))
    with torch.no_grad():
        model(target_list=batch["target_list"], **batch["net_input"])
    assert sorted(inputs) == [i for i, k in enumerate(kept) if k]  # the draws were replayed right
    T = seen["spk"].size(1)
    if kept[0] or kept[1]:  # the last of layers 0..1 that ran feeds layer 2 (or is the encoder output)
        expected = inputs[2].transpose(0, 1)[:, :T] if kept[2] else seen["out"][:, :T]
    else:  # neither ran: the encoder output
        expected = seen["out"][:, :T]
    assert torch.equal(seen["spk"], expected)


@pytest.mark.parametrize("head", ["spk", "pitch"])
def test_grl_reverses_and_scales_encoder_gradient(task_and_batch, fixed_masks, head):
    """Gradient of a head's loss w.r.t. encoder weights = -lambda x the gradient without the GRL."""
    task, batch = task_and_batch
    grads = {}
    for variant in ("grl", "identity"):
        model = build(task, pitch_mode="adversarial", adv_weight=0.3).eval()
        if variant == "identity":
            model.grl = nn.Identity()
        out = model(target_list=batch["target_list"], **batch["net_input"])
        loss = out["spk_logits"].logsumexp(-1).sum() if head == "spk" else out["pitch_pred"].pow(2).sum()
        loss.backward()
        grads[variant] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    enc = "encoder.layers.0.fc1.weight"
    assert grads["identity"][enc].abs().sum() > 0
    assert torch.allclose(grads["grl"][enc], -0.3 * grads["identity"][enc], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads["grl"]["feature_extractor.conv_layers.0.0.weight"],
                          -0.3 * grads["identity"]["feature_extractor.conv_layers.0.0.weight"], rtol=1e-3, atol=1e-8)
    head_param = "spk_head.mlp.0.weight" if head == "spk" else "pitch_head.mlp.0.weight"
    assert torch.allclose(grads["grl"][head_param], grads["identity"][head_param], atol=1e-6)  # head not reversed
    if head == "spk":  # layers above the tapped layer get nothing from the speaker loss
        assert "encoder.layers.2.fc1.weight" not in grads["grl"]


@pytest.mark.parametrize("frames", ["unmasked", "all"])
def test_speaker_adversary_pools_over_chosen_frames(task_and_batch, fixed_masks, frames):
    """spk_frames=unmasked: the adversary's pooling ignores padding and masked frames (every 3rd
    frame here), so changing the tapped layer's output at masked frames leaves its logits alone."""
    task, batch = task_and_batch
    model = build(task, spk_frames=frames).eval()
    seen = {}
    model.spk_head.pool.register_forward_pre_hook(lambda m, args: seen.update(ignored=args[1].clone()))
    out = model(target_list=batch["target_list"], **batch["net_input"])
    pad = out["padding_mask"]
    masked = torch.zeros_like(pad)
    masked[:, ::3] = True
    assert pad.any() and not pad.all(1).any()
    expected = pad | masked if frames == "unmasked" else pad
    assert torch.equal(seen["ignored"], expected)

    def perturb_masked(module, args, output):  # layer 0 output is (T, B, C)
        x = output[0].clone()
        x[::3] += 5.0
        return (x,) + tuple(output[1:])

    handle = model.encoder.layers[0].register_forward_hook(perturb_masked, prepend=True)  # before the tap
    out2 = model(target_list=batch["target_list"], **batch["net_input"])
    handle.remove()
    same = torch.allclose(out2["spk_logits"], out["spk_logits"], atol=1e-5)
    assert same == (frames == "unmasked")
    assert torch.equal(model.speaker_frames(pad, None), pad)  # no mask: padding only
    assert torch.equal(model.speaker_frames(pad, masked), expected)


def test_auxiliary_pitch_is_not_reversed(task_and_batch, fixed_masks):
    task, batch = task_and_batch
    x = torch.randn(2, 5, 32, requires_grad=True)
    reverse_grad(x, 0.7).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.7))
    grads = []
    for variant in ("grl", "identity"):
        model = build(task, pitch_mode="auxiliary", spk_layer=0, adv_weight=0.7).eval()
        if variant == "identity":
            model.grl = nn.Identity()
        out = model(target_list=batch["target_list"], **batch["net_input"])
        assert "spk_logits" not in out
        out["pitch_pred"].pow(2).sum().backward()
        grads.append(model.encoder.layers[0].fc1.weight.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-7)


def test_lambda_schedules():
    assert scheduled_weight("constant", 0, 0.7, 100) == 0.7
    assert scheduled_weight("dann", 0, 1.0, 100) == 0.0
    assert scheduled_weight("dann", 50, 1.0, 100) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert scheduled_weight("dann", 10_000, 2.0, 100) == pytest.approx(2 * (2 / (1 + math.exp(-10)) - 1))
    assert scheduled_weight("linear", 25, 2.0, 100) == pytest.approx(0.5)
    assert scheduled_weight("linear", 500, 2.0, 100) == pytest.approx(2.0)
    values = [scheduled_weight("dann", u, 1.0, 100) for u in range(0, 120, 10)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="positive ramp"):
        scheduled_weight("linear", 1, 1.0, 0)
    with pytest.raises(ValueError, match="unknown adversary schedule"):
        scheduled_weight("cosine", 1, 1.0, 10)
    assert "lambda_=0.5" in repr(GradientReversal(0.5))


def test_model_schedule_follows_num_updates(task_and_batch):
    task, batch = task_and_batch
    model = build(task, adv_schedule="linear", adv_weight=1.0, adv_warmup_updates=0, max_update=40)
    model.set_num_updates(10)  # horizon = max_update
    assert model.grl.lambda_ == pytest.approx(0.25)
    model = build(task, adv_schedule="dann", adv_warmup_updates=20)
    model.set_num_updates(10)
    out = model(target_list=batch["target_list"], **batch["net_input"])
    assert out["adv_weight"] == pytest.approx(0.5 * (2 / (1 + math.exp(-5)) - 1))
    with pytest.raises(ValueError, match="adv_warmup_updates"):
        build(task, adv_schedule="dann", max_update=0)
    with pytest.raises(ValueError, match="spk_layer=4 must be in"):
        build(task, spk_layer=4)


@pytest.mark.parametrize("name", POOLING_CHOICES)
def test_masked_pooling_batched_equals_single(name):
    """Every spk_pooling choice ignores padded frames."""
    torch.manual_seed(0)
    pool = build_pooling(name, 6, 8).eval()
    lengths = [7, 3, 10, 1]
    seqs = [torch.randn(n, 6) for n in lengths]
    x = torch.full((4, 10, 6), 123.0)  # garbage in padded frames must not matter
    pad = torch.ones(4, 10, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, :len(s)], pad[i, :len(s)] = s, False
    batched = pool(x, pad)
    for i, s in enumerate(seqs):
        assert torch.allclose(batched[i], pool(s[None], None)[0], atol=1e-6)
    assert torch.allclose(MeanPooling(6)(x, pad)[1], seqs[1].mean(0), atol=1e-6)


def test_pitch_targets_follow_model_frames(task_and_batch):
    task, batch = task_and_batch
    model = build(task)
    assert model.feat2pitch_ratio == 2.0  # 100 Hz pitch, 320-sample frames at 16 kHz
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    pitch = torch.arange(24.0).view(2, 12, 1).repeat(1, 1, 2)
    tgt, valid = model.get_pitch_targets({"padding_mask": pad}, pitch, torch.tensor([12, 7]))
    assert tgt[0, :, 0].tolist() == [0, 2, 4, 6, 8, 10]
    assert valid[1].tolist() == [True, True, True, True, False, False]  # frame 4 <- pitch 8 >= 7, and padding
    assert valid[0].all()


def test_criteria_are_summable_and_match_fairseq(task_and_batch, fixed_masks):
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.logging import metrics

    task, batch = task_and_batch
    model = build(task).eval()
    kw = dict(pred_masked_weight=1.0, pred_nomask_weight=0.5, loss_weights=[10.0])
    losses = {}
    for name, crit in (("fairseq", HubertCriterion(task, **kw)), ("ours", HubertSummableCriterion(task, **kw)),
                       ("dh0", DHubertCriterion(task, **kw, spk_weight=0, pitch_weight=0, vuv_weight=0)),
                       ("dh", DHubertCriterion(task, **kw, spk_weight=1, pitch_weight=2, vuv_weight=3))):
        losses[name] = crit(model, batch)
    assert losses["ours"][0].item() == pytest.approx(losses["fairseq"][0].item(), rel=1e-5)
    assert losses["dh0"][0].item() == pytest.approx(losses["fairseq"][0].item(), rel=1e-5)
    loss, sample_size, log = losses["dh"]
    heads = log["loss_spk"] + log["loss_pitch"] + log["loss_vuv"]
    assert loss.item() == pytest.approx(losses["fairseq"][0].item() + float(heads), rel=1e-5)
    assert float(log["loss_pitch"]) == pytest.approx(2 * float(log["pitch_sq_err"]) / log["pitch_voiced"] * sample_size)
    assert DHubertCriterion.logging_outputs_can_be_summed() and HubertSummableCriterion.logging_outputs_can_be_summed()
    for v in log.values():  # plain numbers: the trainer all-reduces them
        assert isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)
    # summing logging outputs first (multi-process) gives the same metrics as reducing the list
    log2 = DHubertCriterion(task, **kw)(model, batch)[2]
    summed = {k: log[k] + log2[k] for k in log}
    results = []
    for outputs in ([log, log2], [summed]):
        with metrics.aggregate(new_root=True) as agg:
            DHubertCriterion.reduce_metrics(outputs)
            results.append(agg.get_smoothed_values())
    expected = {"loss", "spk_acc", "pitch_rmse", "vuv_acc", "grl_lambda", "correct_m_0"}
    assert set(results[0]) == set(results[1]) >= expected
    for k in results[0]:
        assert float(results[0][k]) == pytest.approx(float(results[1][k]), rel=1e-3, abs=1e-3), k


def test_running_standardize_statistics_and_gradient():
    torch.manual_seed(0)
    norm = RunningStandardize(3, momentum=0.25)
    data = torch.randn(4, 8, 3) * torch.tensor([0.01, 1.0, 10.0]) + torch.tensor([5.0, -2.0, 0.0])
    for batch in data:  # the first 1/momentum = 4 batches are averaged cumulatively: exact statistics
        norm(batch)
    flat = data.reshape(-1, 3)
    assert torch.allclose(norm.running_mean, flat.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, flat.var(0, unbiased=False), rtol=1e-4)
    norm.eval()
    before = norm.running_mean.clone()
    x = flat[:5].clone().requires_grad_(True)
    y = norm(x)
    assert torch.equal(norm.running_mean, before)  # no update in eval mode
    assert torch.allclose(norm(flat).mean(0), torch.zeros(3), atol=1e-3)
    y.sum().backward()  # statistics are constants: d y / d x = 1 / std per channel
    expected = torch.rsqrt(norm.running_var + norm.eps).expand(5, 3)
    assert torch.allclose(x.grad, expected, rtol=1e-5)
    assert x.grad[0, 0] > 50 * x.grad[0, 2]  # a shrunken channel gets a larger gradient
    norm.train()
    norm(torch.full((2, 3), 100.0))  # then an exponential moving average with weight 0.25
    assert torch.allclose(norm.running_mean, 0.75 * flat.mean(0) + 25.0, atol=1e-4)
    with pytest.raises(ValueError, match="momentum"):
        RunningStandardize(3, momentum=0.0)


def test_speaker_head_standardizes_in_training_only(task_and_batch, fixed_masks):
    task, batch = task_and_batch
    model = build(task, spk_standardize=True)
    norm = model.spk_head.norm
    assert isinstance(norm, RunningStandardize) and int(norm.num_batches) == 0
    model(target_list=batch["target_list"], **batch["net_input"])
    assert int(norm.num_batches) == 1 and norm.running_var.ne(1.0).all()
    model.eval()
    model(target_list=batch["target_list"], **batch["net_input"])
    assert int(norm.num_batches) == 1
    assert isinstance(build(task, spk_standardize=False).spk_head.norm, nn.Identity)


def test_speaker_memory_is_a_fifo():
    mem = SpeakerMemory(4, 2)
    assert len(mem) == 0 and mem.get()[0].shape == (0, 2)
    mem.push(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), torch.tensor([0, 1, 2]))
    feats, labels = mem.get()
    mem.push(torch.tensor([[3.0, 3.0], [4.0, 4.0]]), torch.tensor([3, 4]))  # overwrites the oldest (0)
    assert labels.tolist() == [0, 1, 2]  # what get() returned is not changed by later pushes
    feats, labels = mem.get()
    assert len(mem) == 4 and sorted(labels.tolist()) == [1, 2, 3, 4]
    assert torch.equal(feats[:, 0], labels.float())
    mem.push(torch.arange(12.0).view(6, 2), torch.arange(6))  # more than the capacity: the last 4 stay
    assert sorted(mem.get()[1].tolist()) == [2, 3, 4, 5]
    assert "feats" not in mem.state_dict()  # not saved in checkpoints
    with pytest.raises(ValueError, match="positive"):
        SpeakerMemory(0, 2)


def test_speaker_memory_trains_the_classifier_only(task_and_batch, fixed_masks):
    """In training, a forward given the speaker ids (as the criterion passes them) stores the
    batch's embeddings; the next forward classifies them again: their loss reaches the speaker MLP
    but not the encoder (or the pooling below it)."""
    task, batch = task_and_batch
    model = build(task, spk_memory_size=16, pitch_layer=0)
    crit = DHubertCriterion(task, 1.0, 0.0, [10.0], spk_weight=1.0)
    n_utts = batch["id"].numel()
    out = model(target_list=batch["target_list"], **batch["net_input"])
    assert "spk_memory_logits" not in out and len(model.spk_memory) == 0
    crit(model, batch)  # one step: the memory now holds this batch's embeddings
    assert len(model.spk_memory) == n_utts
    assert torch.equal(model.spk_memory.get()[1], batch["spk_id"])
    out = model(target_list=batch["target_list"], **batch["net_input"])
    assert out["spk_memory_logits"].shape == (n_utts, len(task.speakers))
    model.zero_grad()
    nn.functional.cross_entropy(out["spk_memory_logits"], out["spk_memory_labels"]).backward()
    assert model.spk_head.mlp[0].weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].fc1.weight.grad is None
    loss, _, log = crit(model, batch)
    assert log["loss_spk_memory"] > 0 and len(model.spk_memory) == min(16, 2 * n_utts)
    model.eval()
    out = model(target_list=batch["target_list"], **batch["net_input"])
    crit(model, batch)
    assert "spk_memory_logits" not in out and len(model.spk_memory) == min(16, 2 * n_utts)  # eval: untouched


def test_seeded_masks_are_reproducible(task_and_batch):
    """Masks depend on (mask_seed, update, call) only: equal in reruns, different across updates."""
    task, batch = task_and_batch

    def masks(model, updates, calls=1):
        model.set_num_updates(updates)
        seen = []
        orig = model.apply_mask

        def record(x, padding_mask, target_list):
            x, m = orig(x, padding_mask, target_list)
            seen.append(m.clone())
            return x, m

        model.apply_mask = record
        for _ in range(calls):
            model(target_list=batch["target_list"], **batch["net_input"])
        model.apply_mask = orig
        return seen

    a, b = build(task), build(task)
    first, again = masks(a, 7, calls=2), masks(b, 7, calls=2)
    assert all(torch.equal(x, y) for x, y in zip(first, again))  # reruns mask the same frames
    assert not torch.equal(first[0], first[1])  # a second call in the same update (accumulation) differs
    assert not torch.equal(masks(a, 8)[0], first[0])  # so does the next update
    assert not torch.equal(masks(build(task, mask_seed=2), 7)[0], first[0])  # and another seed
    assert not torch.equal(first[0][0], first[0][1])  # rows differ
    unseeded = build(task, seeded_masks=False)
    assert unseeded.mask_seed is None and masks(unseeded, 7)[0].any()
    assert build(task, mask_seed="${common.seed}").mask_seed == 1  # unresolved outside hydra: seed 1

