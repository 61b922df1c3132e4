"""Usage: fairseq-ext-collapse-phones PHONES_TSV MANIFEST_DIR [--splits train,valid] [--ext phn]

Turn a frame-level phone reference (``uid<TAB>p1,p2,...``, one phone per frame, as
``fairseq-ext-demo-corpus`` writes ``phones.tsv``) into phone transcripts for the phone-recognition task:
equal neighbouring frames are collapsed into one phone, and for each split the utterances of
MANIFEST_DIR/{split}.tsv get a line ``uid<TAB>p1 p2 ...`` in MANIFEST_DIR/{split}.{ext}, in manifest
order. MANIFEST_DIR/dict.phn.txt lists every phone of those splits with its count in the first split.

An utterance of a manifest without a reference line is an error naming the manifest line.
"""

import argparse
import itertools
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.data.phone_transcripts import write_phone_dictionary, write_phone_transcripts
from fairseq_ext.label_quality import read_phones

logger = logging.getLogger("fairseq_ext.collapse_phones")


def collapse_repeats(frames: Sequence[str]) -> List[str]:
    """``["sil", "sil", "aa", "aa", "sil"]`` -> ``["sil", "aa", "sil"]``."""
    return [p for p, _ in itertools.groupby(frames)]


def main(phones_tsv: str, manifest_dir: str, splits: str = "train,valid", ext: str = "phn") -> Dict[str, Path]:
    """Write ``{split}.{ext}`` for each split and ``dict.phn.txt``; returns their paths by split (and ``dict``)."""
    frames = read_phones(phones_tsv, rm_stress=False)
    names = [s for s in splits.split(",") if s]
    if not names:
        raise UserError("--splits is empty: give split names such as train,valid")
    out: Dict[str, Path] = {}
    counts: Dict[str, int] = {}
    for k, split in enumerate(names):
        manifest = read_manifest(os.path.join(manifest_dir, f"{split}.tsv"))
        items = []
        for entry, uid in zip(manifest.entries, manifest.unique_uids()):
            if uid not in frames:
                raise UserError(f"{manifest.path}:{entry.line}: utterance {uid} has no line in {phones_tsv}")
            phones = collapse_repeats(frames[uid])
            items.append((uid, phones))
            for p in phones:
                counts[p] = counts.get(p, 0) + (1 if k == 0 else 0)
        out[split] = write_phone_transcripts(Path(manifest_dir) / f"{split}.{ext}", items)
        logger.info("%s: %d transcripts -> %s", split, len(items), out[split])
    out["dict"] = write_phone_dictionary(Path(manifest_dir) / "dict.phn.txt", dict(sorted(counts.items())))
    logger.info("%d phones -> %s", len(counts), out["dict"])
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phones_tsv", help="frame-level phone reference, uid<TAB>p1,p2,...")
    parser.add_argument("manifest_dir", help="folder with the {split}.tsv manifests; the transcripts go there too")
    parser.add_argument("--splits", default="train,valid", help="comma-separated split names (default: train,valid)")
    parser.add_argument("--ext", default="phn", help="transcript extension (default: phn)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
