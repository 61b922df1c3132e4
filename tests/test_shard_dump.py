"""simple_kmeans/shard_dump.py: the one shard loop of the feature dumpers, with a toy feature kind."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import soundfile as sf

from conftest import write_manifest
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import load_feat_shard
from simple_kmeans.shard_dump import ShardFeature, check_too_short, dump_shard, plan_shard, windows


class MeanFeature(ShardFeature):
    """One frame per 100 samples: the frame's mean and its index. Records the order of events."""

    name = "toy"
    dim = 2

    def __init__(self, events: List[str], window_samples: int = 0, read_ahead: bool = False):
        self.events, self.window_samples, self.read_ahead = events, window_samples, read_ahead

    def too_short(self, manifest, entry) -> Optional[str]:
        return None if entry.n_samples >= 100 else f"{entry.relpath} is too short"

    def extract(self, wavs):
        self.events.append(f"extract {len(wavs)}")
        return [np.stack([w[: len(w) // 100 * 100].reshape(-1, 100).mean(1), np.arange(len(w) // 100)], 1)
                for w in wavs]

    def finish(self):
        self.events.append("finish")


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    wav = tmp_path / "wav"
    wav.mkdir()
    for name, n in [("a", 1000), ("b", 50), ("c", 730), ("d", 400), ("e", 250)]:
        sf.write(wav / f"{name}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="FLOAT")
    (wav / "d.wav").write_bytes(b"not audio")  # unreadable, listed with its old length
    write_manifest(wav, tmp_path / "m" / "train.tsv",
                   [wav / f"{x}.wav" for x in "abc"] + [wav / "e.wav"])
    lines = (tmp_path / "m" / "train.tsv").read_text().splitlines()
    lines.insert(4, "d.wav\t400")
    (tmp_path / "m" / "train.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize("window_samples, read_ahead", [(0, False), (1500, True)])
def test_skips_writes_and_commits_in_order(corpus, window_samples, read_ahead):
    events: List[str] = []
    feature = MeanFeature(events, window_samples, read_ahead)
    job = plan_shard(str(corpus / "m"), "train", 1, 0, str(corpus / "f"), skip_bad=True)
    too_short = check_too_short(job, feature)
    assert [e.relpath for e in too_short] == ["b.wav"]
    job.begin()
    stats = dump_shard(job, feature, too_short)
    feats, lengths = load_feat_shard(corpus / "f", "train", 0, 1, mmap=False)
    assert lengths.tolist() == [10, 7, 2] and feats.shape == (19, 2)
    assert (stats.utterances, stats.frames, stats.samples, stats.dim) == (3, 19, 1980, 2)
    assert feats[:, 1].tolist() == list(range(10)) + list(range(7)) + list(range(2))
    report = (corpus / "f" / "train_0_1.skipped.tsv").read_text().splitlines()
    assert [r.split("\t")[:2] for r in report[1:]] == [["3", "b.wav"], ["5", "d.wav"]]  # manifest order
    assert events[-1] == "finish"
    if window_samples:  # a, b, c in one window (b counts no samples), then d, e
        assert events[:-1] == ["extract 2", "extract 1"]


def test_without_skip_bad_too_short_is_refused_before_any_output(corpus):
    job = plan_shard(str(corpus / "m"), "train", 1, 0, str(corpus / "f"))
    with pytest.raises(UserError, match="b.wav is too short; or rerun with --skip-bad"):
        check_too_short(job, MeanFeature([]))
    assert not (corpus / "f").exists()


def test_windows():
    class E:
        def __init__(self, n):
            self.n_samples = n

    es = [E(5), E(1), E(6), E(2), E(9)]
    assert [[e.n_samples for e in w] for w in windows(es, 6)] == [[5, 1], [6], [2, 9]]
    assert [[e.n_samples for e in w] for w in windows(es, 6, {es[1]})] == [[5, 1, 6], [2, 9]]
