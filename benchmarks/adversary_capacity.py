"""Usage: python -m benchmarks.adversary_capacity CHECKPOINT [--layer 1] [--crops 6] [--steps 1500]
           [--batch 4] [--lr 0.002] [--seed 0]

How well can a speaker classifier trained the way the dhubert adversary is trained (online Adam,
a few pooled 1 s crops per step) find the speaker in FROZEN layer features, compared with a
logistic-regression probe trained on all of them? Explains an adversary that sits near chance:
if even without an encoder fighting back it learns slowly, its reversed gradient is weak.

From the checkpoint's training split: ``--crops`` random 1 s crops of every utterance, mean-pooled
layer ``--layer`` features (unmasked pass); the last crop of each utterance is held out. Printed:
held-out accuracy of (a) logistic regression on standardised vectors, (b) the adversary's MLP
(Linear-ReLU-Linear, hidden 32) trained online on raw vectors and (c) on standardised vectors,
after 100, 400 and ``--steps`` steps. Chance = 1 / speakers.
"""

from __future__ import annotations

import argparse
import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from fairseq_ext.base.cli import run_cli

logger = logging.getLogger("adversary_capacity")


def pooled_crops(ckpt: str, layer: int, crops: int, seed: int):
    """``(X (crops * N, C), y (crops * N,), N)``: mean-pooled layer features of random 1 s crops."""
    from fairseq_ext import load_model

    model, _, task = load_model(ckpt)
    task.load_dataset("train")
    ds = task.datasets["train"]
    rng = np.random.default_rng(seed)
    feats, spk = [], []
    with torch.no_grad():
        for _ in range(crops):
            for i in range(len(ds)):
                wav = ds.get_audio(i)
                if len(wav) > 16000:
                    start = int(rng.integers(0, len(wav) - 16000))
                    wav = wav[start:start + 16000]
                x, _ = model.extract_features(wav[None].float(), padding_mask=None, mask=False, output_layer=layer)
                feats.append(x[0].mean(0).numpy())
                spk.append(ds[i]["spk_id"])
    return np.stack(feats), np.array(spk), len(ds)


def online_mlp(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
               n_classes: int, steps: int, batch: int, lr: float, seed: int) -> Dict[int, float]:
    """Held-out accuracy of the adversary-shaped MLP after 100, 400 and ``steps`` online steps."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(x_train.shape[1], 32), nn.ReLU(), nn.Linear(32, n_classes))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    xt, yt = torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train)
    xe = torch.tensor(x_test, dtype=torch.float32)
    checkpoints, out = {100, 400, steps}, {}
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xt), (batch,))
        loss = nn.functional.cross_entropy(head(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in checkpoints:
            with torch.no_grad():
                out[step] = float((head(xe).argmax(-1).numpy() == y_test).mean())
    return out


def main(checkpoint: str, layer: int = 1, crops: int = 6, steps: int = 1500, batch: int = 4, lr: float = 0.002,
         seed: int = 0) -> Dict[str, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y, n = pooled_crops(checkpoint, layer, crops, seed)
    n_classes = int(y.max()) + 1
    x_train, y_train, x_test, y_test = x[:-n], y[:-n], x[-n:], y[-n:]
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y_train)
    results: Dict[str, object] = {
        "chance": 1.0 / n_classes,
        "logreg_standardised": float(probe.score(scaler.transform(x_test), y_test)),
        "mlp_raw": online_mlp(x_train, y_train, x_test, y_test, n_classes, steps, batch, lr, seed),
        "mlp_standardised": online_mlp(scaler.transform(x_train), y_train, scaler.transform(x_test), y_test,
                                       n_classes, steps, batch, lr, seed),
    }
    print(f"layer {layer}, {n} utterances x {crops} crops ({n} held out), {n_classes} speakers, "
          f"chance {results['chance']:.3f}")
    print(f"logistic regression, standardised, all crops: {results['logreg_standardised']:.3f}")
    for name in ("mlp_raw", "mlp_standardised"):
        accs = ", ".join(f"{s} steps {a:.3f}" for s, a in sorted(results[name].items()))
        print(f"{name} (online Adam lr {lr}, batch {batch}): {accs}")
    return results


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a dhubert checkpoint (its task gives the training split and speakers)")
    p.add_argument("--layer", type=int, default=1, help="1-based transformer layer (default: %(default)s)")
    p.add_argument("--crops", type=int, default=6, help="random 1 s crops per utterance (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1500, help="online training steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="vectors per online step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and the MLP (default: %(default)s)")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
