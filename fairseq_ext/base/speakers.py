"""Speaker names per utterance: ``{split}.spk`` files (one name per manifest line) and ``uid<TAB>speaker``
tables. Written by ``simple_kmeans/speaker_labels.py``; read by the label pipeline, the probe and the
speaker tasks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import Manifest


def check_name(name: str, where: str) -> str:
    """Return ``name`` if it is a usable speaker name (non-empty, no white space)."""
    if not name or any(c.isspace() for c in name):
        raise UserError(f"{where}: speaker name {name!r} is empty or contains white space")
    return name


def read_speaker_table(path: os.PathLike | str) -> Dict[str, str]:
    """Read ``uid<TAB>speaker`` lines into ``{uid: speaker}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"speaker table {path} does not exist")
    table: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UserError(f"{path}:{i}: expected 'uid<TAB>speaker', got {line.rstrip()!r}")
            uid, spk = parts
            check_name(spk, f"{path}:{i}")
            if table.get(uid, spk) != spk:
                raise UserError(f"{path}:{i}: utterance {uid} is listed with two speakers, "
                                f"{table[uid]} and {spk}")
            table[uid] = spk
    if not table:
        raise UserError(f"speaker table {path} is empty")
    return table


def speakers_from_table(manifest: Manifest, table_path: os.PathLike | str) -> List[str]:
    """Speaker of every manifest line, looked up by utterance id in a ``uid<TAB>speaker`` table."""
    table = read_speaker_table(table_path)
    out = []
    for entry in manifest.entries:
        uid = manifest.uid(entry)
        if uid not in table:
            raise UserError(
                f"{manifest.path}:{entry.line}: utterance {uid} ({entry.relpath}) has no speaker in "
                f"{table_path}; add a line '{uid}<TAB>speaker'"
            )
        out.append(table[uid])
    return out


def read_spk_file(path: os.PathLike | str) -> List[str]:
    """Speaker names of a ``{split}.spk`` file, one per manifest line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"speaker file {path} does not exist: create it with speaker_labels.py")
    with open(path, encoding="utf-8") as f:
        names = f.read().splitlines()
    return [check_name(name.strip(), f"{path}:{i}") for i, name in enumerate(names, start=1)]
