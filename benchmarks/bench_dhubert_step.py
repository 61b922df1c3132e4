"""Usage: python -m benchmarks.bench_dhubert_step [--quick] [--sizes tiny,base4x256] [--repeats 21]
           [--steps 1] [--threads 1] [--dhubert-set KEY=VALUE ...]

Training step time (forward + backward + gradient clipping + Adam step) of the disentangled HuBERT
against plain HuBERT at equal sizes, side by side in one process:

  hubert        fairseq's HubertModel + fairseq's ``hubert`` criterion (what users run today)
  hubert_ext    this package's baseline: model ``dhubert`` with both heads off + ``hubert_summable``
  dhubert       model ``dhubert`` with the speaker adversary and the pitch head as configured in
                config/pretrain/dhubert_*.yaml (the model defaults: frame-level confusion adversary,
                speaker-conditioned prediction; memory 1024 frames for tiny as dhubert_tiny, 4096 for
                base4x256 as dhubert_base; ``--dhubert-set KEY=VALUE ...`` changes model keys) + criterion ``dhubert`` (speaker CE, log-F0 MSE, voicing BCE)

Sizes (same masking, dropout 0, one seeded synthetic batch of 16 kHz noise, 100 Hz labels, K=100):
  tiny          config/pretrain/dhubert_tiny: 2 layers x 64, 32-channel CNN; batch 4 x 1 s
  base4x256     4 layers x 256 (FFN 1024, 4 heads), 256-channel HuBERT CNN; adversary at layer 2,
                pitch head at layer 4, heads 256 wide; batch 4 x 2 s
The variants are interleaved: every repeat times --steps steps of each variant, in a rotating order,
after 2 warm-up steps each. Reported: median milliseconds per step over the repeats, and the median
over repeats of the per-repeat time ratios (robust to load drifting between repeats):
dhubert/hubert (target <= 1.10x), hubert_ext/hubert (same network: the noise floor) and
dhubert/hubert_ext (the cost of the heads alone). --quick: tiny only, 11 repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZES: Dict[str, Dict] = {
    "tiny": dict(model=dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                            encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4, final_dim=32,
                            conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"),
                 heads=dict(spk_layer=1, pitch_layer=2, spk_hidden_dim=32, pitch_hidden_dim=32, spk_memory_size=1024),
                 batch=4, seconds=1.0),
    "base4x256": dict(model=dict(encoder_layers=4, encoder_embed_dim=256, encoder_ffn_embed_dim=1024,
                                 encoder_attention_heads=4, conv_pos=64, conv_pos_groups=16, final_dim=128,
                                 conv_feature_layers="[(256,10,5)] + [(256,3,2)] * 4 + [(256,2,2)] * 2"),
                      heads=dict(spk_layer=2, pitch_layer=4, spk_hidden_dim=256, pitch_hidden_dim=256,
                                 spk_memory_size=4096),
                      batch=4, seconds=2.0),
}
COMMON = dict(label_rate=100.0, mask_prob=0.65, mask_length=5, dropout=0.0, attention_dropout=0.0,
              activation_dropout=0.0, dropout_input=0.0, dropout_features=0.0, encoder_layerdrop=0.0,
              feature_grad_mult=0.1, untie_final_proj=True, extractor_mode="default")
N_CLUSTERS, N_SPEAKERS, SR = 100, 8, 16000


def parse_sets(items: Optional[List[str]]) -> Dict[str, object]:
    """``["spk_unit=utterance", "spk_memory_size=256"]`` -> ``{"spk_unit": "utterance", "spk_memory_size": 256}``
    (values typed as hydra types them)."""
    from omegaconf import OmegaConf

    bad = [item for item in items or [] if "=" not in item]
    if bad:
        raise SystemExit(f"--dhubert-set {bad[0]!r}: expected KEY=VALUE")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items or [])))


def dictionary():
    from fairseq.data.dictionary import Dictionary

    d = Dictionary()
    for i in range(N_CLUSTERS):
        d.add_symbol(str(i))
    return d


def build(variant: str, size: Dict, dhubert_set: Optional[Dict[str, object]] = None):
    """``(model, criterion)`` of one variant; ``dhubert_set`` overrides model keys of ``dhubert``."""
    import fairseq_ext
    fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq_ext.criteria.dhubert import DHubertCriterion
    from fairseq_ext.criteria.hubert_summable import HubertSummableCriterion
    from fairseq_ext.models.dhubert import DHubertConfig, DHubertModel
    from fairseq_ext.tasks.dhubert_pretraining import DHubertPretrainingConfig

    dicts = [dictionary()]
    task_cfg = DHubertPretrainingConfig(label_rate=100.0, sample_rate=SR, pitch_rate=100.0, data="-",
                                        load_pitch=variant == "dhubert", load_speaker=variant == "dhubert")
    crit_args = dict(task=None, pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10.0])
    if variant == "hubert":
        model = HubertModel(HubertConfig(**COMMON, **size["model"]), task_cfg, dicts)
        return model, HubertCriterion(**crit_args)
    heads = {**size["heads"], **(dhubert_set or {})} if variant == "dhubert" else dict(
        spk_layer=0, pitch_layer=0, spk_condition=False)
    cfg = DHubertConfig(**COMMON, **size["model"], **heads, head_dropout=0.0, adv_schedule="constant",
                        max_update=1000)
    model = DHubertModel(cfg, task_cfg, dicts, n_speakers=N_SPEAKERS if variant == "dhubert" else 0)
    model.set_num_updates(500)
    if variant == "dhubert":
        return model, DHubertCriterion(**crit_args)
    return model, HubertSummableCriterion(**crit_args)


def make_batch(size: Dict, seed: int = 0) -> Dict:
    """One fairseq-style pre-training batch (the fields DHubertDataset collates)."""
    g = torch.Generator().manual_seed(seed)
    b, n = size["batch"], int(size["seconds"] * SR)
    n_lab = int(n * 100 / SR)
    log_f0 = torch.randn(b, n_lab, generator=g) * 0.3
    voiced = (torch.rand(b, n_lab, generator=g) > 0.4).float()
    pitch = torch.stack([log_f0, voiced], -1)
    return {
        "id": torch.arange(b),
        "net_input": {"source": torch.randn(b, n, generator=g) * 0.1,
                      "padding_mask": torch.zeros(b, n, dtype=torch.bool)},
        "target_list": [torch.randint(0, N_CLUSTERS, (b, n_lab), generator=g)],
        "spk_id": torch.randint(0, N_SPEAKERS, (b,), generator=g),
        "pitch": pitch,
        "pitch_lengths": torch.full((b,), n_lab, dtype=torch.long),
    }


def make_step(variant: str, size: Dict, dhubert_set: Optional[Dict[str, object]] = None) -> Callable[[], float]:
    """A closure doing one training step of ``variant``; returns the loss."""
    torch.manual_seed(0)
    model, criterion = build(variant, size, dhubert_set)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    batch = make_batch(size)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss, sample_size, _ = criterion(model, batch)
        (loss / max(sample_size, 1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        return float(loss.detach())

    return step


def bench_size(name: str, repeats: int, steps: int, variants: List[str],
               dhubert_set: Optional[Dict[str, object]] = None) -> Dict[str, float]:
    size = SIZES[name]
    fns = {v: make_step(v, size, dhubert_set) for v in variants}
    for v, fn in fns.items():  # warm-up (allocator, first-call overheads); losses must be finite
        for _ in range(2):
            assert np.isfinite(fn()), f"{v}: non-finite loss"
    times: Dict[str, List[float]] = {v: [] for v in variants}
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[v]()
            times[v].append((time.perf_counter() - t0) / steps)
    out = {v: statistics.median(t) * 1000 for v, t in times.items()}
    # ratios within a repeat (adjacent in time) are robust to the machine's load drifting between repeats
    for num, den in (("dhubert", "hubert"), ("hubert_ext", "hubert"), ("dhubert", "hubert_ext")):
        out[f"{num}/{den}"] = statistics.median(a / b for a, b in zip(times[num], times[den]))
    return out


def main(quick: bool = False, sizes: str = "tiny,base4x256", repeats: int = 21, steps: int = 1,
         threads: int = 1, dhubert_set: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    torch.set_num_threads(threads)
    np.random.seed(0)  # fairseq draws HuBERT's masks from numpy's global state
    names = ["tiny"] if quick else [s for s in sizes.split(",") if s]
    unknown = [s for s in names if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}; choose from {sorted(SIZES)}")
    repeats = min(repeats, 11) if quick else repeats
    overrides = parse_sets(dhubert_set)
    variants = ["hubert", "hubert_ext", "dhubert"]
    results = {}
    print(f"torch {torch.__version__}, {threads} thread(s); median ms per training step over {repeats} "
          f"interleaved repeats of {steps} steps; dhubert: model defaults + {overrides}")
    ratios = ["dhubert/hubert", "hubert_ext/hubert", "dhubert/hubert_ext"]
    print(f"{'size':<10} {'batch':>9} " + " ".join(f"{v:>11}" for v in variants) + " "
          + " ".join(f"{r:>18}" for r in ratios))
    for name in names:
        ms = bench_size(name, repeats, steps, variants, overrides)
        results[name] = ms
        size = SIZES[name]
        cells = " ".join(f"{ms[v]:>11.1f}" for v in variants)
        print(f"{name:<10} {size['batch']:>3} x {size['seconds']:.0f} s {cells} "
              + " ".join(f"{ms[r]:>17.3f}x" for r in ratios), flush=True)
    return results


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny size only, 11 repeats")
    p.add_argument("--sizes", default="tiny,base4x256", help=f"comma-separated, from {sorted(SIZES)}")
    p.add_argument("--repeats", type=int, default=21, help="interleaved repeats (median reported)")
    p.add_argument("--steps", type=int, default=1, help="training steps per variant per repeat")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--dhubert-set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="model keys of the dhubert variant (several after one flag, or the flag repeated), "
                        "e.g. spk_unit=utterance spk_memory_size=256")
    return p


if __name__ == "__main__":
    main(**vars(get_parser().parse_args()))
