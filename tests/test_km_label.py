"""dump_km_label.py: batched labels equal fairseq's ApplyKmeans, .km layout, CLI and bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from simple_kmeans import dump_km_label
from fairseq_ext.base.atomic import NpyStreamWriter
from fairseq_ext.base.errors import UserError
from fairseq_ext.kmeans.backends import centers_to_estimator

REPO = Path(__file__).resolve().parents[1]


def write_shard(feat_dir: Path, split: str, rank: int, nshard: int, lengths, dim: int, seed: int,
                centers: np.ndarray | None = None) -> np.ndarray:
    """Write ``{split}_{rank}_{nshard}.npy/.len``; frames around ``centers`` if given, else N(0, 1)."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    if centers is None:
        feats = rng.standard_normal((n, dim)).astype(np.float32)
    else:
        feats = (centers[rng.integers(len(centers), size=n)]
                 + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    with NpyStreamWriter(feat_dir / f"{split}_{rank}_{nshard}.npy", dim) as w:
        for s in range(0, n, 97):  # several appends, like a dumper
            w.append(feats[s:s + 97])
    (feat_dir / f"{split}_{rank}_{nshard}.len").write_text("".join(f"{x}\n" for x in lengths))
    return feats


def fairseq_labels(km_path: Path, feats: np.ndarray, lengths) -> list:
    """fairseq's ApplyKmeans applied per utterance (its dump_label loop), as text lines."""
    from benchmarks.reference import fairseq_example

    ref = fairseq_example("simple_kmeans/dump_km_label.py")
    apply = ref.ApplyKmeans(str(km_path))
    lines, pos = [], 0
    for n in lengths:
        lines.append(" ".join(map(str, apply(feats[pos:pos + n]).tolist())))
        pos += n
    return lines


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    dim, k = 12, 20
    centers = rng.standard_normal((k, dim)).astype(np.float32) * 2
    km_path = tmp_path / "km.bin"
    joblib.dump(centers_to_estimator(centers), km_path)
    feat_dir = tmp_path / "feat"
    feat_dir.mkdir()
    lengths = [[37, 0, 150, 5, 61], [200, 3, 1, 88]]
    feats = [write_shard(feat_dir, "train", r, 2, lengths[r], dim, seed=r) for r in range(2)]
    return feat_dir, km_path, feats, lengths, centers


@pytest.mark.parametrize("batch_frames", [1, 7, 64, None])
def test_labels_identical_to_fairseq(setup, tmp_path, batch_frames):
    feat_dir, km_path, feats, lengths, _ = setup
    lab_dir = tmp_path / "lab"
    for rank in range(2):
        out = dump_km_label.main(str(feat_dir), "train", str(km_path), 2, rank, str(lab_dir),
                                 batch_frames=batch_frames, device="cpu")
        lines = Path(out).read_text().split("\n")
        assert lines[-1] == ""  # every line ends with a newline
        lines = lines[:-1]
        assert len(lines) == len(lengths[rank])  # one line per .len line
        assert [len(x.split()) for x in lines] == lengths[rank]
        assert lines == fairseq_labels(km_path, feats[rank], lengths[rank])


def test_fairseq_minibatch_model_and_near_ties(tmp_path):
    """A fairseq-style MiniBatchKMeans model; frames near centroid midpoints stress rounding."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(1)
    dim = 39
    train = rng.standard_normal((3000, dim)).astype(np.float32) * 5
    km = MiniBatchKMeans(n_clusters=50, n_init=1, random_state=0, compute_labels=False).fit(train)
    km_path = tmp_path / "fairseq_km.bin"
    joblib.dump(km, km_path)
    c = km.cluster_centers_
    i, j = rng.integers(50, size=400), rng.integers(50, size=400)
    mids = (c[i] + c[j]) / 2 + 1e-3 * rng.standard_normal((400, dim))
    feat_dir = tmp_path / "feat"
    feat_dir.mkdir()
    feats = np.concatenate([rng.standard_normal((600, dim)) * 5, mids]).astype(np.float32)
    lengths = [100] * 10
    with NpyStreamWriter(feat_dir / "valid_0_1.npy", dim) as w:
        w.append(feats)
    (feat_dir / "valid_0_1.len").write_text("100\n" * 10)
    out = dump_km_label.main(str(feat_dir), "valid", str(km_path), 1, 0, str(tmp_path / "lab"), device="cpu")
    assert Path(out).read_text().splitlines() == fairseq_labels(km_path, feats, lengths)


def test_sensible_labels_and_rerun_overwrites(setup, tmp_path):
    feat_dir, km_path, feats, lengths, centers = setup
    # frames drawn around the centers get their own center's label
    write_shard(feat_dir, "blobs", 0, 1, [300, 200], centers.shape[1], seed=5, centers=centers)
    lab = tmp_path / "lab"
    out = Path(dump_km_label.main(str(feat_dir), "blobs", str(km_path), 1, 0, str(lab), device="cpu"))
    first = out.read_text()
    rng = np.random.default_rng(5)
    expect = rng.integers(len(centers), size=500)
    got = np.array(" ".join(first.splitlines()).split(), dtype=int)
    assert (got == expect).mean() > 0.99
    dump_km_label.main(str(feat_dir), "blobs", str(km_path), 1, 0, str(lab), device="cpu")
    assert out.read_text() == first  # replaced, not appended
    assert sorted(p.name for p in lab.iterdir()) == ["blobs_0_1.km"]  # no temporary left


def test_utterance_chunks_cover_everything():
    lengths = np.array([5, 0, 30, 2, 2, 9])
    chunks = list(dump_km_label.utterance_chunks(lengths, 8))
    assert chunks[0] == (0, 2, 0, 5)
    assert chunks[1] == (2, 3, 5, 35)  # longer than a chunk: alone
    assert [c[:2] for c in chunks] == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert chunks[-1][3] == lengths.sum()


def test_cli_subprocess_and_help(setup, tmp_path):
    feat_dir, km_path, feats, lengths, _ = setup
    lab = tmp_path / "lab_cli"
    r = subprocess.run([sys.executable, "-m", "simple_kmeans.dump_km_label", str(feat_dir), "train",
                        str(km_path), "2", "1", str(lab), "--batch-frames", "50"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (lab / "train_1_2.km").read_text().splitlines() == fairseq_labels(km_path, feats[1], lengths[1])
    r = subprocess.run([sys.executable, "-m", "simple_kmeans.dump_km_label", "--help"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage:") and "Usage:" in r.stdout
    assert "--batch-frames" in r.stdout


def _cli(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "simple_kmeans.dump_km_label", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


def test_missing_shard_exits_2(setup, tmp_path):
    feat_dir, km_path, *_ = setup
    r = _cli([feat_dir, "train", km_path, 3, 0, tmp_path / "lab"], tmp_path)
    assert r.returncode == 2
    assert "train_0_3" in r.stderr and "does not exist" in r.stderr


def test_bad_len_exits_2(setup, tmp_path):
    feat_dir, km_path, *_ = setup
    (feat_dir / "train_0_2.len").write_text("37\n0\n150\n5\n60\n")
    r = _cli([feat_dir, "train", km_path, 2, 0, tmp_path / "lab"], tmp_path)
    assert r.returncode == 2
    assert "train_0_2.len" in r.stderr and "train_0_2.npy" in r.stderr
    assert not (tmp_path / "lab" / "train_0_2.km").exists()


def test_dim_mismatch_and_bad_model(setup, tmp_path):
    feat_dir, km_path, *_ = setup
    other = tmp_path / "km8.bin"
    joblib.dump(centers_to_estimator(np.eye(8, dtype=np.float32)), other)
    r = _cli([feat_dir, "train", other, 2, 0, tmp_path / "lab"], tmp_path)
    assert r.returncode == 2
    assert "km8.bin" in r.stderr and "train_0_2.npy" in r.stderr and "8-dim" in r.stderr
    joblib.dump({"not": "a model"}, tmp_path / "junk.bin")
    with pytest.raises(UserError, match="junk.bin.*cluster_centers_"):
        dump_km_label.main(str(feat_dir), "train", str(tmp_path / "junk.bin"), 2, 0, str(tmp_path / "lab"))
    with pytest.raises(UserError, match="missing.bin.*does not exist"):
        dump_km_label.main(str(feat_dir), "train", str(tmp_path / "missing.bin"), 2, 0, str(tmp_path / "lab"))


def test_cuda_requested_without_gpu(setup, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    feat_dir, km_path, *_ = setup
    with pytest.raises(UserError, match="--device cuda"):
        dump_km_label.main(str(feat_dir), "train", str(km_path), 2, 0, str(tmp_path / "lab"), device="cuda")


def test_rank_from_environment(setup, tmp_path, monkeypatch):
    feat_dir, km_path, feats, lengths, _ = setup
    for var in ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    out = dump_km_label.main(str(feat_dir), "train", str(km_path), "env", "env", str(tmp_path / "lab"),
                             device="cpu")
    assert Path(out).name == "train_1_2.km"
    assert Path(out).read_text().splitlines() == fairseq_labels(km_path, feats[1], lengths[1])
