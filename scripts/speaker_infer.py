"""Usage: python scripts/speaker_infer.py CHECKPOINT INPUT OUTPUT_CSV [--batch-size 32] [--device cpu]
                                       [--ssl-checkpoint PATH]

Predict one label per utterance with a ``conformer_speaker`` checkpoint (task
``speaker_classification``) and write a Kaggle-style CSV::

    Id,Category
    uttr-0a1b.pt,id10473

INPUT is a homework ``testdata.json`` (precomputed features; Id = its ``feature_path``) or a fairseq
manifest ``.tsv`` (raw audio; Id = the manifest's relative path). When the manifest has labels
(``{name}.lbl`` next to it), the accuracy is logged as well. Utterances are batched by length and
padded; the model's predictions do not depend on the padding. The label names come from the
checkpoint, so the training data need not be present. Models with a frozen SSL upstream reload
their SSL checkpoint: pass --ssl-checkpoint when it has moved.
"""

import argparse
import csv
import logging
from pathlib import Path
from typing import List, Optional

import torch

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("speaker_infer")


@torch.no_grad()
def predict(model, dataset, batch_size: int, device: str) -> torch.Tensor:
    """Class index per item of ``dataset`` (in dataset order): ``(N,)``."""
    order = sorted(range(len(dataset)), key=lambda i: dataset.sizes[i])
    preds = torch.empty(len(dataset), dtype=torch.long)
    for start in progress(range(0, len(order), batch_size), desc="predicting", unit="batch"):
        batch = dataset.collater([dataset[i] for i in order[start:start + batch_size]])
        net_input = {k: v.to(device) for k, v in batch["net_input"].items()}
        logits = model(**net_input)["logits"]
        preds[batch["id"]] = logits.argmax(-1).cpu()
    return preds


def main(checkpoint: str, input: str, output: str, batch_size: int = 32, device: str = "cpu",
         ssl_checkpoint: Optional[str] = None) -> Path:
    """Write ``output`` (Id,Category); returns its path."""
    from fairseq_ext import load_model

    if not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    if not Path(input).is_file():
        raise UserError(f"input {input} does not exist: give a testdata.json or a manifest .tsv")
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    overrides = {"ssl_checkpoint": ssl_checkpoint} if ssl_checkpoint else None
    model, cfg, task = load_model(checkpoint, arg_overrides=overrides, device=device)
    if not hasattr(task, "inference_dataset"):
        raise UserError(f"{checkpoint} was trained with task {cfg.task._name!r}, not speaker_classification")
    dataset, ids = task.inference_dataset(input)
    labels: List[str] = task.labels
    preds = predict(model, dataset, batch_size, device)
    targets = dataset.labels
    if (targets >= 0).all():
        acc = float((preds.numpy() == targets).mean()) * 100
        logger.info("accuracy on %s: %.2f%% (%d utterances)", input, acc, len(ids))
    out = Path(output)
    with atomic_output(out, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "Category"])
        for uid, p in zip(ids, preds.tolist()):
            writer.writerow([uid, labels[p]])
    logger.info("wrote %d predictions to %s", len(ids), out)
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="conformer_speaker checkpoint (checkpoint_best.pt)")
    parser.add_argument("input", help="testdata.json (homework features) or a manifest .tsv (audio)")
    parser.add_argument("output", help="CSV to write (Id,Category)")
    parser.add_argument("--batch-size", type=int, default=32, help="utterances per batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--ssl-checkpoint", default=None,
                        help="new path of the frozen SSL checkpoint the model was trained on")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
