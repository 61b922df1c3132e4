"""Speaker / keyword inference with a ``conformer_speaker`` checkpoint (task ``speaker_classification``).

    from fairseq_ext.speaker_inference import write_predictions
    write_predictions("checkpoint_best.pt", "testdata.json", "pred.csv")

``scripts/speaker_infer.py`` is its command line. The input is a homework ``testdata.json``
(precomputed features; Id = its ``feature_path``) or a fairseq manifest ``.tsv`` (raw audio; Id =
the manifest's relative path); when the manifest has labels (``{name}.lbl`` next to it), the
accuracy is logged as well. Utterances are batched by length and padded; the model's predictions
do not depend on the padding. The label names come from the checkpoint, so the training data
need not be present.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import List, Optional

import torch

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("speaker_infer")


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, batch_size: int, device: str) -> torch.Tensor:
    """Class index per item of ``dataset`` (in dataset order): ``(N,)``.

    Args:
        model: a ``conformer_speaker`` model whose forward returns ``{"logits": (B, n_classes)}``.
        dataset: the task's dataset (``sizes``, ``collater``, items with ``id``), e.g. from
            ``task.inference_dataset`` or ``task.datasets[split]``.
        batch_size: utterances per batch (sorted by length, so batches hold similar lengths).
        device: torch device of ``model``.
    """
    order = sorted(range(len(dataset)), key=lambda i: dataset.sizes[i])
    preds = torch.empty(len(dataset), dtype=torch.long)
    for start in progress(range(0, len(order), batch_size), desc="predicting", unit="batch"):
        batch = dataset.collater([dataset[i] for i in order[start:start + batch_size]])
        net_input = {k: v.to(device) for k, v in batch["net_input"].items()}
        logits = model(**net_input)["logits"]
        preds[batch["id"]] = logits.argmax(-1).cpu()
    return preds


def write_predictions(checkpoint: str, input: str, output: str, batch_size: int = 32, device: str = "cpu",
                      ssl_checkpoint: Optional[str] = None) -> Path:
    """Predict one label per utterance of ``input`` and write the Kaggle-style CSV ``output``
    (``Id,Category``); returns its path.

    Args:
        checkpoint: ``conformer_speaker`` checkpoint (e.g. ``checkpoint_best.pt``).
        input: ``testdata.json`` (homework features) or a manifest ``.tsv`` (audio).
        output: CSV to write (atomically).
        batch_size: utterances per batch.
        device: torch device, e.g. ``cuda``.
        ssl_checkpoint: new path of the frozen SSL checkpoint the model was trained on (when it moved).
    Raises:
        UserError: missing files, a bad batch size, or a checkpoint of another task.
    """
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
