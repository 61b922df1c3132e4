"""Usage: speaker_labels.py tsv_dir split lab_dir (--table uid2spk.tsv | --from-path parent|grandparent|REGEX)
                          [--dict PATH_OR_DIR]

Write utterance-level speaker labels for a manifest, for speaker heads and speaker-adversarial
(disentangled HuBERT) training.

Reads ``{tsv_dir}/{split}.tsv`` and writes into ``lab_dir``:
  {split}.spk     one speaker name per manifest line, in manifest order
  dict.spk.txt    (training split: without --dict) lines ``name count`` (utterances per
                  speaker), sorted by name; a speaker's index is its 0-based line number

Where the speaker comes from (utterance id = file basename without extension):
  --table FILE             lines ``uid<TAB>speaker`` (e.g. the demo corpus' speakers.tsv);
                           every manifest utterance must be listed.
  --from-path parent       the name of the folder holding the file (VCTK: p225/p225_001.wav);
  --from-path grandparent  the folder above it (LibriSpeech: 103/1240/103-1240-0000.flac);
  --from-path REGEX        a regular expression searched in the manifest's relative path: the
                           group named ``spk`` if any, else group 1, else the whole match, e.g.
                           '([^/]+)-[0-9]+-[0-9]+[.]flac$' (LibriSpeech file names).

For validation/test splits pass --dict with the training split's dict.spk.txt (or its folder):
every speaker must be in it (closed-set speaker labels); the dictionary is copied into lab_dir
when lab_dir has none. Speaker names cannot contain white space.

Features dumped with --skip-bad: run this on the kept-files manifest (fairseq-ext-merge-labels
--kept-manifest-dir DIR, or fairseq-ext-status features ... --write-kept-manifest DIR), the
manifest training reads, so that {split}.spk lines up with it and with the merged labels line for
line. (pitch_stats.py also accepts a .spk made from the original manifest, with --tsv-dir.)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_ext.base.atomic import atomic_output, check_writable_dir
from fairseq_ext.base.cli import run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest, manifest_path, read_manifest
from fairseq_ext.base.speakers import check_name, speakers_from_table

logger = logging.getLogger("speaker_labels")

DICT_NAME = "dict.spk.txt"
PATH_KEYWORDS = ("parent", "grandparent")


def spk_path(lab_dir: os.PathLike | str, split: str) -> Path:
    """``{lab_dir}/{split}.spk``."""
    return Path(lab_dir) / f"{split}.spk"


# --------------------------------------------------------------------------- sources


def speaker_from_path(relpath: str, spec: str, where: str = "") -> str:
    """Speaker name of one relative path for a ``--from-path`` spec (keyword or regex)."""
    parts = Path(relpath).parts
    if spec in PATH_KEYWORDS:
        depth = PATH_KEYWORDS.index(spec) + 2
        if len(parts) < depth:
            raise UserError(f"{where}: {relpath} has no {spec} folder in the manifest; use --table "
                            f"or a --from-path regular expression")
        return check_name(parts[-depth], where)
    match = re.compile(spec).search(relpath)
    if match is None:
        raise UserError(f"{where}: --from-path {spec!r} does not match {relpath}")
    if "spk" in match.re.groupindex:
        name = match.group("spk")
    elif match.re.groups:
        name = match.group(1)
    else:
        name = match.group(0)
    return check_name(name or "", where)


def speakers_from_path(manifest: Manifest, spec: str) -> List[str]:
    """Speaker of every manifest line from its relative path."""
    if spec not in PATH_KEYWORDS:
        try:
            re.compile(spec)
        except re.error as e:
            raise UserError(f"--from-path {spec!r} is neither {' nor '.join(PATH_KEYWORDS)} nor a valid "
                            f"regular expression: {e}") from None
    return [speaker_from_path(e.relpath, spec, f"{manifest.path}:{e.line}") for e in manifest.entries]


# --------------------------------------------------------------------------- files


def dict_path(path_or_dir: os.PathLike | str) -> Path:
    """``path_or_dir`` itself, or ``path_or_dir/dict.spk.txt`` when it is a folder."""
    path = Path(path_or_dir)
    return path / DICT_NAME if path.is_dir() else path


def read_spk_dict(path_or_dir: os.PathLike | str) -> Dict[str, int]:
    """``{speaker: index}`` of a ``dict.spk.txt`` (index = 0-based line number)."""
    path = dict_path(path_or_dir)
    if not path.is_file():
        raise UserError(f"speaker dictionary {path} does not exist: run speaker_labels.py on the "
                        f"training split first (without --dict)")
    index: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise UserError(f"{path}:{i}: expected 'speaker count', got {line.rstrip()!r}")
            if parts[0] in index:
                raise UserError(f"{path}:{i}: speaker {parts[0]} is listed twice")
            index[parts[0]] = len(index)
    if not index:
        raise UserError(f"speaker dictionary {path} is empty")
    return index


def format_spk_dict(counts: Dict[str, int]) -> str:
    """``dict.spk.txt`` content: ``name count`` lines sorted by name."""
    return "".join(f"{name} {counts[name]}\n" for name in sorted(counts))


# --------------------------------------------------------------------------- main


def main(tsv_dir: str, split: str, lab_dir: str, table: Optional[str] = None, from_path: Optional[str] = None,
         dict: Optional[str] = None) -> Path:  # noqa: A002 (named like the CLI option)
    """Write ``{lab_dir}/{split}.spk`` (and ``dict.spk.txt`` without ``dict``); returns the ``.spk`` path."""
    if (table is None) == (from_path is None):
        raise UserError("give exactly one of --table and --from-path")
    manifest = read_manifest(manifest_path(tsv_dir, split))
    speakers = speakers_from_table(manifest, table) if table else speakers_from_path(manifest, from_path)
    check_writable_dir(lab_dir)
    out_dict = Path(lab_dir) / DICT_NAME
    counts = Counter(speakers)
    if dict is not None:
        known = read_spk_dict(dict)
        for entry, spk in zip(manifest.entries, speakers):
            if spk not in known:
                raise UserError(
                    f"{manifest.path}:{entry.line}: utterance {manifest.uid(entry)} has speaker {spk}, which is "
                    f"not in {dict_path(dict)}; speaker labels are closed-set: drop the utterance or label the "
                    f"training split with this speaker too"
                )
        text = dict_path(dict).read_text(encoding="utf-8")
        if not out_dict.exists():
            with atomic_output(out_dict) as f:
                f.write(text)
        elif out_dict.read_text(encoding="utf-8") != text:
            raise UserError(f"{out_dict} differs from --dict {dict_path(dict)}: use another lab_dir or "
                            f"remove {out_dict}")
    else:
        text = format_spk_dict(counts)
        if out_dict.exists() and out_dict.read_text(encoding="utf-8") != text:
            logger.warning("replacing %s with the speakers of %s (for validation splits pass --dict)",
                           out_dict, split)
        with atomic_output(out_dict) as f:
            f.write(text)
    out = spk_path(lab_dir, split)
    with atomic_output(out) as f:
        f.writelines(f"{spk}\n" for spk in speakers)
    logger.info("wrote %s: %d utterances of %d speakers", out, len(speakers), len(counts))
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv_dir", help="folder holding {split}.tsv")
    parser.add_argument("split", help="manifest name without .tsv")
    parser.add_argument("lab_dir", help="output folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", help="uid<TAB>speaker table")
    source.add_argument("--from-path", help="parent, grandparent, or a regular expression on the relative path")
    parser.add_argument("--dict", default=None,
                        help="existing dict.spk.txt (or its folder) of the training split; without it, "
                             "dict.spk.txt is written from this split")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
