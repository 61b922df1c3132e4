"""Shared test fixtures: a tiny, seeded synthetic corpus and manifest writing."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_manifest(root: Path, dest_tsv: Path, files: List[Path] | None = None) -> Path:
    """Write a fairseq manifest for ``files`` (default: every .wav under ``root``, sorted)."""
    import soundfile as sf

    root = Path(root).resolve()
    files = sorted(root.rglob("*.wav")) if files is None else files
    dest_tsv.parent.mkdir(parents=True, exist_ok=True)
    with open(dest_tsv, "w") as f:
        f.write(f"{root}\n")
        for p in files:
            f.write(f"{Path(p).resolve().relative_to(root)}\t{sf.info(str(p)).frames}\n")
    return dest_tsv


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A 3-speaker x 4-utterance synthetic corpus (see simple_kmeans.make_demo_corpus), read-only."""
    from simple_kmeans import make_demo_corpus

    out = tmp_path_factory.mktemp("demo_corpus")
    make_demo_corpus.main(str(out), n_speakers=3, utts_per_speaker=4, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_manifest(demo_corpus, tmp_path_factory) -> Path:
    """Folder with ``train.tsv`` listing every utterance of ``demo_corpus`` (read-only)."""
    d = tmp_path_factory.mktemp("manifest")
    write_manifest(demo_corpus / "wav", d / "train.tsv")
    return d


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny tensors: threads only add synchronisation cost), then restore."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
