"""The data of the dhubert experiments: a generated multi-speaker corpus, manifests that hold out
the last utterances of each speaker, and MFCC k-means labels made by the label pipeline.

Layout under OUT: corpus/ (make_demo_corpus), manifest/{train,valid}.tsv, labels/ (the label
pipeline's output folder: labels/labels/{train,valid}.km, labels/feat, labels/km.mdl).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.steps import Runner, Unit

PLAIN = ["task.load_speaker=false", "task.load_pitch=false", "model.spk_layer=0", "model.pitch_layer=0",
         "model.spk_condition=false",
         "criterion._name=hubert_summable", "~criterion.spk_weight", "~criterion.pitch_weight",
         "~criterion.vuv_weight"]
"""Overrides that turn config/pretrain/dhubert_tiny into plain HuBERT (no heads, HuBERT's loss)."""


def make_corpus(runner: Runner, out: Path, n_speakers: int, utts: int, seed: int) -> Path:
    """Step ``corpus``: OUT/corpus from simple_kmeans.make_demo_corpus."""
    from simple_kmeans import make_demo_corpus

    corpus = out / "corpus"
    runner.run([Unit("corpus", make_demo_corpus.main,
                     {"out_dir": str(corpus), "n_speakers": n_speakers, "utts_per_speaker": utts, "seed": seed},
                     [corpus / "speakers.tsv", corpus / "phones.tsv"])])
    return corpus


def write_manifests(corpus: Path, man: Path, heldout: int) -> Path:
    """train.tsv: all but the last ``heldout`` utterances of each speaker; valid.tsv: those."""
    import soundfile as sf

    root = (corpus / "wav").resolve()
    lines: Dict[str, List[str]] = {"train": [], "valid": []}
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        wavs = sorted(spk_dir.glob("*.wav"))
        if len(wavs) <= heldout or heldout < 2:
            raise UserError(f"{spk_dir} has {len(wavs)} utterances: need more than --heldout-per-speaker "
                            f"{heldout} (>= 2)")
        for i, wav in enumerate(wavs):
            split = "valid" if i >= len(wavs) - heldout else "train"
            lines[split].append(f"{wav.relative_to(root)}\t{sf.info(str(wav)).frames}\n")
    for split, rows in lines.items():
        text = f"{root}\n" + "".join(rows)
        path = man / f"{split}.tsv"
        if not path.is_file() or path.read_text() != text:
            with atomic_output(path) as f:
                f.write(text)
    return man


def make_labels(man: Path, out: Path, n_clusters: int, seed: int, force: bool = False) -> Path:
    """MFCC k-means labels (100 Hz, faiss) of train and valid by the label pipeline, in OUT/labels;
    returns the label folder (OUT/labels/labels)."""
    from simple_kmeans import pipeline

    result = pipeline.main(tsv_dir=str(man), out_dir=str(out / "labels"), nshard=1, jobs=1, n_clusters=n_clusters,
                           seed=seed, backend="faiss", force=force, quiet=True)
    return result["out_dir"] / "labels"
