"""Usage: fairseq-ext-pr-eval CKPT SPLIT_TSV_DIR [--split test] [--out hyps.txt] [--batch-size 8] [--upstream PATH]

Evaluate a phone-recognition checkpoint (task ``phone_recognition``): greedy CTC decoding of every
utterance of SPLIT_TSV_DIR/{split}.tsv, the phone error rate against SPLIT_TSV_DIR/{split}.phn
(``uid<TAB>p1 p2 ...``; without that file the split is only decoded), and, with --out, the hypotheses
as ``uid<TAB>p1 p2 ...`` lines in manifest order (like fairseq-generate's H lines, one per utterance).

The phone dictionary comes from the checkpoint; the frozen upstream is rebuilt from the path recorded
in it (model.upstream) before the checkpoint's weights are loaded: --upstream gives another path for
that file (e.g. on another machine). PER = (substitutions + deletions + insertions) / reference
phones, summed over the split.
"""

import argparse
import logging
from typing import Dict, List, Optional

import torch

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.data.phone_transcripts import ctc_blank_index
from fairseq_ext.phone_error import PhoneErrors, ctc_greedy_decode, phone_errors

logger = logging.getLogger("fairseq_ext.pr_eval")


def decode_split(model, task, split: str, batch_size: int = 8) -> Dict[str, List[str]]:
    """Greedy CTC hypotheses ``uid -> phones`` of every utterance of the task's loaded ``split``."""
    dataset = task.dataset(split)
    dictionary = task.target_dictionary
    blank = ctc_blank_index(dictionary)
    order = list(dataset.ordered_indices())
    device = next(model.parameters()).device
    hyps: Dict[str, List[str]] = {}
    for start in progress(range(0, len(order), batch_size), desc=f"decode {split}", unit="batch"):
        batch = dataset.collater([dataset[i] for i in order[start:start + batch_size]])
        net_input = {k: v.to(device) for k, v in batch["net_input"].items()}
        with torch.inference_mode():
            out = model(**net_input)
        mask = out["padding_mask"]
        ids = ctc_greedy_decode(out["log_probs"].float().cpu(), None if mask is None else mask.cpu(), blank)
        for index, seq in zip(batch["id"].tolist(), ids):
            hyps[dataset.items[index].uid] = [dictionary[i] for i in seq]
    return hyps


def main(ckpt: str, data: str, split: str = "test", out: Optional[str] = None, batch_size: int = 8,
         upstream: Optional[str] = None, device: str = "cpu", trust_checkpoint: bool = False) -> Optional[PhoneErrors]:
    """Decode ``split`` of ``data``; print and return the PER (None for an unlabeled split); write ``out``."""
    from fairseq_ext.checkpoint import CheckpointError, load_model

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    overrides = {"data": data, "feature_cache": ""}  # never write into the training run's cache
    if upstream:
        overrides["upstream"] = upstream
    try:
        model, cfg, task = load_model(ckpt, arg_overrides=overrides, device=device, trusted=trust_checkpoint)
    except (FileNotFoundError, CheckpointError) as e:
        raise UserError(str(e)) from None
    if cfg.task._name != "phone_recognition":
        raise UserError(f"{ckpt} is a {cfg.task._name} checkpoint, not a phone_recognition one")
    task.load_dataset(split, require_transcripts=False)
    items = task.dataset(split).items
    hyps = decode_split(model, task, split, batch_size)
    if out:
        with atomic_output(out) as f:
            for it in items:
                f.write(f"{it.uid}\t{' '.join(hyps[it.uid])}\n")
        logger.info("wrote %d hypotheses to %s", len(items), out)
    if items[0].phones is None:
        print(f"{split}: {len(items)} utterances decoded (no {split}.{task.cfg.transcript_ext}: no PER)")
        return None
    dictionary = task.target_dictionary
    errors = phone_errors([[dictionary[i] for i in it.phones] for it in items], [hyps[it.uid] for it in items])
    print(f"{split}: PER {100 * errors.per:.2f}% ({errors.errors} errors / {errors.ref_phones} phones, "
          f"{len(items)} utterances)")
    return errors


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="phone_recognition checkpoint (checkpoint_best.pt)")
    parser.add_argument("data", metavar="SPLIT_TSV_DIR", help="folder with {split}.tsv and optionally {split}.phn")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", default=None, help="write hypotheses 'uid<TAB>p1 p2 ...' to this file")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass")
    parser.add_argument("--upstream", default=None, help="path of the upstream checkpoint (default: the recorded one)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle everything the checkpoint holds (only for files you trust)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
