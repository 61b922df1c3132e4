"""learn_kmeans.py: fairseq-compatible models from every backend, sampling, memory cap, CLI, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from fairseq_ext.kmeans import sample as feature_sample
from simple_kmeans import learn_kmeans
from fairseq_ext.base.atomic import NpyStreamWriter
from fairseq_ext.base.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DIM, N_BLOBS = 8, 6


def write_shards(feat_dir: Path, split: str = "train", nshard: int = 2, seed: int = 0, blobs: bool = True):
    """Shards of utterances of 20-80 frames; frames around 6 well-separated centers (or N(0, 1)).

    Returns ``(centers, per-shard frames, per-shard true blob ids)``.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((N_BLOBS, DIM)) * 10
    feats, ids = [], []
    for rank in range(nshard):
        lengths = rng.integers(20, 80, size=30)
        y = rng.integers(N_BLOBS, size=int(lengths.sum()))
        x = centers[y] + 0.5 * rng.standard_normal((len(y), DIM)) if blobs else \
            rng.standard_normal((len(y), DIM))
        x = x.astype(np.float32)
        with NpyStreamWriter(feat_dir / f"{split}_{rank}_{nshard}.npy", DIM) as w:
            pos = 0
            for n in lengths:
                w.append(x[pos:pos + n])
                pos += n
        (feat_dir / f"{split}_{rank}_{nshard}.len").write_text("".join(f"{n}\n" for n in lengths))
        feats.append(x)
        ids.append(y)
    return centers, feats, ids


@pytest.fixture
def blobs(tmp_path):
    d = tmp_path / "feat"
    d.mkdir()
    return d, *write_shards(d)


SMALL_SKLEARN = dict(max_iter=5, batch_size=256, n_init=3)


@pytest.mark.parametrize("backend", ["sklearn", "faiss", "torch"])
def test_model_loads_in_fairseq_and_finds_blobs(blobs, tmp_path, backend):
    from benchmarks.reference import fairseq_example

    feat_dir, centers, feats, ids = blobs
    km_path = tmp_path / f"{backend}.km.bin"
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(km_path), N_BLOBS, backend=backend, **SMALL_SKLEARN)
    assert s.n_frames == sum(len(f) for f in feats) and s.dim == DIM
    assert 0 < s.inertia_per_frame < 0.5 ** 2 * DIM * 1.2  # noise variance per frame
    apply = fairseq_example("simple_kmeans/dump_km_label.py").ApplyKmeans(str(km_path))
    x, y = np.concatenate(feats), np.concatenate(ids)
    labels = apply(x)
    # every true blob is one cluster and every cluster one blob
    pairs = set(zip(y.tolist(), labels.tolist()))
    assert len(pairs) == N_BLOBS and len({p[1] for p in pairs}) == N_BLOBS
    model = joblib.load(km_path)
    assert np.array_equal(model.predict(x), labels)  # a real, fitted sklearn estimator
    assert model.cluster_centers_.dtype == np.float32 and model.cluster_centers_.shape == (N_BLOBS, DIM)
    assert b"simple_kmeans" not in km_path.read_bytes()  # unpickles without our package


def test_sklearn_backend_equals_fairseq(blobs, tmp_path):
    """Same seed, same sampling, same MiniBatchKMeans: fairseq's centroids exactly."""
    from benchmarks.reference import fairseq_example

    feat_dir = blobs[0]
    ref = fairseq_example("simple_kmeans/learn_kmeans.py")
    ref_path = tmp_path / "fairseq.km"
    ref.learn_kmeans(str(feat_dir), "train", 2, str(ref_path), 10, seed=3, percent=0.5, init="k-means++",
                     max_iter=5, batch_size=256, tol=0.0, n_init=3, reassignment_ratio=0.0,
                     max_no_improvement=100)
    ours = tmp_path / "ours.km"
    learn_kmeans.main(str(feat_dir), "train", 2, str(ours), 10, seed=3, percent=0.5, backend="sklearn",
                      **SMALL_SKLEARN)
    np.testing.assert_array_equal(joblib.load(ours).cluster_centers_, joblib.load(ref_path).cluster_centers_)


@pytest.mark.parametrize("percent", [-1.0, 0.3])
def test_sample_equals_fairseq_load_feature(blobs, percent):
    from benchmarks.reference import fairseq_example

    feat_dir = blobs[0]
    ref = fairseq_example("simple_kmeans/learn_kmeans.py")
    np.random.seed(7)
    expect = ref.load_feature(str(feat_dir), "train", 2, 7, percent)
    got = learn_kmeans.load_sample(str(feat_dir), "train", 2, percent, np.random.RandomState(7), None, 7)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("backend,extra", [("sklearn", SMALL_SKLEARN), ("faiss", {}),
                                           ("faiss", {"max_points_per_centroid": 40, "seed_sample": 100}),
                                           ("torch", {"device": "cpu", "seed_sample": 500, "chunk_size": 300}),
                                           ("torch", {"device": "cpu", "stream": True, "chunk_size": 100})])
def test_deterministic_per_seed(tmp_path, backend, extra):
    feat_dir = tmp_path / "noise"
    feat_dir.mkdir()
    write_shards(feat_dir, blobs=False)
    runs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        path = tmp_path / f"{name}.km"
        learn_kmeans.main(str(feat_dir), "train", 2, str(path), 12, seed=seed, backend=backend, **extra)
        runs[name] = joblib.load(path).cluster_centers_
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


def test_percent_samples_utterances(blobs, tmp_path, caplog):
    feat_dir, _, feats, _ = blobs
    caplog.set_level(logging.INFO)
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "km"), N_BLOBS, percent=0.2,
                          backend="faiss")
    rng = np.random.RandomState(0)
    expect = 0
    for rank in range(2):
        lengths = np.loadtxt(feat_dir / f"train_{rank}_2.len", dtype=int)
        expect += int(lengths[rng.choice(len(lengths), 6, replace=False)].sum())  # ceil(30 * 0.2)
    assert s.n_frames == expect
    assert "sampled 6 utterances" in caplog.text
    assert "inertia per frame" in caplog.text and "peak memory" in caplog.text


def test_max_memory_caps_sample(blobs, tmp_path, caplog):
    feat_dir, _, feats, _ = blobs
    full = np.concatenate(feats)
    per_frame = 4 * DIM + learn_kmeans.WORK_BYTES_PER_FRAME
    budget = 500.5 * per_frame / 2**30
    caplog.set_level(logging.INFO)
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "km"), N_BLOBS, max_memory=budget,
                          backend="faiss")
    assert s.n_frames == 500
    assert "over --max-memory" in caplog.text
    sample = learn_kmeans.load_sample(str(feat_dir), "train", 2, -1, np.random.RandomState(0), budget, 0)
    again = learn_kmeans.load_sample(str(feat_dir), "train", 2, -1, np.random.RandomState(0), budget, 0)
    np.testing.assert_array_equal(sample, again)
    # distinct frames of the data, in their original order
    index = {row.tobytes(): i for i, row in enumerate(full)}
    where = [index[row.tobytes()] for row in sample]
    assert len(set(where)) == 500 and where == sorted(where)
    # with --percent too: a subset of the sampled utterances' frames
    capped = learn_kmeans.load_sample(str(feat_dir), "train", 2, 0.5, np.random.RandomState(0), budget, 0)
    assert len(capped) == 500 and len({index[row.tobytes()] for row in capped}) == 500
    # reading in blocks of 7 rows gives the same sample
    shards = feature_sample.open_shards(str(feat_dir), "train", 2, 0.5, np.random.RandomState(0))
    small = feature_sample.materialize(shards, 500, np.random.default_rng([0, 1]), block_bytes=4 * DIM * 7)
    np.testing.assert_array_equal(small, capped)


def test_sample_positions_uniform():
    gen = np.random.default_rng(0)
    pos = feature_sample.sample_positions(gen, 10_000, 3000, block=1000)  # 10 blocks
    assert len(pos) == 3000 and len(np.unique(pos)) == 3000 and np.all(np.diff(pos) > 0)
    assert pos.min() >= 0 and pos.max() < 10_000
    counts = np.bincount(pos // 1000, minlength=10)
    assert counts.min() > 240 and counts.max() < 360  # ~300 per block
    assert len(feature_sample.sample_positions(gen, 10, 10)) == 10


def test_cli_and_rerun_overwrites(blobs, tmp_path):
    feat_dir = blobs[0]
    out = tmp_path / "km_out"
    cmd = [sys.executable, "-m", "simple_kmeans.learn_kmeans", str(feat_dir), "train", "2",
           str(out / "km.bin"), str(N_BLOBS), "--niter", "5", "--percent", "0.5", "--seed", "1"]
    for _ in range(2):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "inertia per frame" in r.stderr and "peak memory" in r.stderr
        assert "faiss k-means (K=6)" in r.stderr  # faiss is the default backend, as in the pipeline
        assert "AVX" not in r.stderr and "ModuleNotFoundError" not in r.stderr  # faiss's loader is quiet
    assert sorted(p.name for p in out.iterdir()) == ["km.bin"]  # no temporaries, one model
    assert joblib.load(out / "km.bin").cluster_centers_.shape == (N_BLOBS, DIM)
    r = subprocess.run(cmd[:3] + ["--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "Usage:" in r.stdout and "--backend" in r.stdout and "--max-memory" in r.stdout
    assert "faiss    (the default" in r.stdout and "same centroids as fairseq" in r.stdout


def _cli(args):
    return subprocess.run([sys.executable, "-m", "simple_kmeans.learn_kmeans", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


def test_missing_shard_exits_2(blobs, tmp_path):
    r = _cli([blobs[0], "train", 3, tmp_path / "km", 4, "--backend", "faiss"])
    assert r.returncode == 2 and "train_0_3.npy" in r.stderr and "does not exist" in r.stderr


def test_bad_inputs(blobs, tmp_path):
    feat_dir = blobs[0]
    (feat_dir / "train_1_2.len").write_text("5\n6\n")
    r = _cli([feat_dir, "train", 2, tmp_path / "km", 4, "--backend", "faiss"])
    assert r.returncode == 2 and "train_1_2.len" in r.stderr and "train_1_2.npy" in r.stderr
    assert not (tmp_path / "km").exists()
    # shards of different dimensions
    d = tmp_path / "mixed"
    d.mkdir()
    write_shards(d, nshard=1)
    with NpyStreamWriter(d / "train_0_1.npy", 3) as w:
        w.append(np.zeros((10, 3)))
    (d / "train_0_1.len").write_text("10\n")
    for name in ("train_1_2", "train_0_2"):
        (d / f"{name}.npy").write_bytes((feat_dir / f"{name}.npy").read_bytes())
        (d / f"{name}.len").write_text((feat_dir / f"{name}.len").read_text())
    with NpyStreamWriter(d / "train_1_2.npy", 3) as w:
        w.append(np.zeros((11, 3)))
    (d / "train_1_2.len").write_text("11\n")
    with pytest.raises(UserError, match="train_1_2.npy has dimension 3 but .*train_0_2.npy has 8"):
        learn_kmeans.main(str(d), "train", 2, str(tmp_path / "km"), 4, backend="faiss")
    with pytest.raises(UserError, match="fewer than n_clusters"):
        learn_kmeans.main(str(feat_dir.parent / "mixed"), "train", 1, str(tmp_path / "km"), 50, backend="faiss")
    with pytest.raises(UserError, match="--percent"):
        learn_kmeans.main(str(d), "train", 1, str(tmp_path / "km"), 4, percent=1.5)
    with pytest.raises(UserError, match="--init"):
        learn_kmeans.main(str(d), "train", 1, str(tmp_path / "km"), 4, backend="faiss", init="bogus")


def test_stream_visits_every_frame_and_finds_blobs(blobs, tmp_path):
    """--stream: mini-batches cover each sampled frame once per pass; a fairseq-readable model."""
    from benchmarks.reference import fairseq_example
    from fairseq_ext.kmeans.stream import batches, pieces

    feat_dir, _, feats, ids = blobs
    x, y = np.concatenate(feats), np.concatenate(ids)
    shards = feature_sample.open_shards(str(feat_dir), "train", 2, -1, np.random.RandomState(0))
    table = pieces(shards, 7)
    got = np.concatenate([b.copy() for b in batches(shards, table, 50, np.random.default_rng(0))])
    assert table[:, 2].max() == 7 and len(got) == len(x)
    np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(x, axis=0))  # each frame once

    kw = dict(backend="sklearn", stream=True, batch_size=64, seed_sample=200, stream_passes=2)
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "a.km"), N_BLOBS, **kw)
    assert s.n_frames == len(x) and s.backend == "sklearn-stream"
    assert 0 < s.inertia_per_frame < 0.5 ** 2 * DIM * 1.2
    labels = fairseq_example("simple_kmeans/dump_km_label.py").ApplyKmeans(str(tmp_path / "a.km"))(x)
    pairs = set(zip(y.tolist(), labels.tolist()))
    assert len(pairs) == N_BLOBS and len({p[1] for p in pairs}) == N_BLOBS
    assert np.array_equal(joblib.load(tmp_path / "a.km").predict(x), labels)
    learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "b.km"), N_BLOBS, **kw)
    np.testing.assert_array_equal(joblib.load(tmp_path / "a.km").cluster_centers_,
                                  joblib.load(tmp_path / "b.km").cluster_centers_)
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "c.km"), N_BLOBS, percent=0.2, **kw)
    assert s.n_frames == learn_kmeans.load_sample(str(feat_dir), "train", 2, 0.2, np.random.RandomState(0),
                                                  None, 0).shape[0]
    with pytest.raises(UserError, match="--stream reads the frames .* --backend torch"):
        learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "d.km"), N_BLOBS, backend="faiss", stream=True)


# --------------------------------------------------------------------------- torch backend


def test_torch_inertia_matches_faiss(tmp_path):
    """Same seeding, Lloyd in torch vs faiss: inertia within 0.5% on unstructured data (hard case)."""
    from fairseq_ext.kmeans.backends import inertia

    feat_dir = tmp_path / "noise"
    feat_dir.mkdir()
    _, feats, _ = write_shards(feat_dir, blobs=False)
    x = np.concatenate(feats)
    got = {}
    for backend in ("faiss", "torch"):
        s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / backend), 16, seed=4, backend=backend)
        got[backend] = inertia(x, joblib.load(tmp_path / backend).cluster_centers_)
        # the logged inertia is the inertia of the saved centers
        assert s.inertia_per_frame == pytest.approx(got[backend] / len(x), rel=1e-5)
        assert s.n_frames == len(x) and s.backend == backend
    assert abs(got["torch"] / got["faiss"] - 1) < 0.005, got
    # and both clearly improve on their common k-means++ start
    from fairseq_ext.kmeans.backends import seed_centers

    assert got["torch"] < 0.9 * inertia(x, seed_centers(x, 16, 4))


def test_torch_stream_and_chunks_give_the_same_centers(blobs, tmp_path):
    """In memory or read from the shards, in chunks of 7 or 32768 frames: the same means of all frames."""
    feat_dir, _, feats, _ = blobs
    n = sum(len(f) for f in feats)
    runs = {}
    for name, kw in [("mem", {}), ("mem7", {"chunk_size": 7}), ("stream", {"stream": True, "chunk_size": 100})]:
        # seed sample = all frames: the same start; well-separated blobs: no frame near a boundary, so
        # float32 rounding (which depends on the chunking) cannot move a frame to another cluster
        s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / name), N_BLOBS, seed=2, backend="torch",
                              device="cpu", seed_sample=n, **kw)
        runs[name] = joblib.load(tmp_path / name).cluster_centers_
        assert s.n_frames == n
    assert s.backend == "torch-stream"
    np.testing.assert_allclose(runs["mem7"], runs["mem"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(runs["stream"], runs["mem"], rtol=0, atol=1e-4)


def test_torch_reseeds_empty_clusters_with_farthest_frames():
    import torch

    from fairseq_ext.kmeans.torch_lloyd import ArrayFrames, lloyd

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((200, 2)), [[30.0, 0.0]]]).astype(np.float32)
    far_end = x[:200][np.argmax(np.linalg.norm(x[:200], axis=1))]
    # center 1 duplicates center 0 (argmin takes the first: it gets nothing), center 2 is far from everything
    init = np.array([[0.0, 0.0], [0.0, 0.0], [1e4, 1e4]], dtype=np.float32)
    frames = ArrayFrames(x, 64, torch.device("cpu"), 3)
    centers, total, done = lloyd(frames, init, 1, torch.device("cpu"))
    np.testing.assert_array_equal(centers[1], x[200])  # the farthest frame (the outlier) ...
    np.testing.assert_array_equal(centers[2], far_end)  # ... then the next farthest
    # ... which left cluster 0: its center is the mean of the other 199 frames
    rest = [i for i in range(200) if not np.array_equal(x[i], far_end)]
    np.testing.assert_allclose(centers[0], x[rest].mean(0), atol=1e-5)
    d = ((x[:, None] - centers[None]) ** 2).sum(-1).min(1)
    assert done == 1 and total == pytest.approx(d.sum(), rel=1e-5)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error without CUDA")
def test_torch_device_cuda_without_cuda(blobs, tmp_path):
    feat_dir = blobs[0]
    with pytest.raises(UserError, match="--device cuda: .*no CUDA device.*--device cpu"):
        learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "km"), 4, backend="torch", device="cuda")
    with pytest.raises(UserError, match="unknown --device 'gpu'"):
        learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "km"), 4, backend="torch", device="gpu")
    r = _cli([feat_dir, "train", 2, tmp_path / "km", 4, "--backend", "torch", "--device", "cuda"])
    assert r.returncode == 2 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "km").exists()
    # auto falls back to the CPU
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "km"), 4, backend="torch", niter=2)
    assert s.backend == "torch" and (tmp_path / "km").is_file()


def test_default_backend_is_faiss_and_stream_alone_is_sklearn(blobs, tmp_path):
    feat_dir = blobs[0]
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "a.km"), N_BLOBS, niter=5)
    assert s.backend == "faiss"
    s = learn_kmeans.main(str(feat_dir), "train", 2, str(tmp_path / "b.km"), N_BLOBS, stream=True, batch_size=256)
    assert s.backend == "sklearn-stream"
    assert learn_kmeans.get_parser().get_default("backend") is None  # resolved in main: one default
