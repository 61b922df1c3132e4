"""fairseq-ext-merge-labels: rank-order merge, dict.km.txt, idempotence, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simple_kmeans import merge_labels
from fairseq_ext.base.atomic import NpyStreamWriter, atomic_output
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import feat_paths, label_path, shard_range

REPO = Path(__file__).resolve().parents[1]
N_UTTS, NSHARD, K = 7, 3, 10


@pytest.fixture
def shards(tmp_path):
    """A 7-utterance manifest, 3 feature shards (.npy/.len) and the matching label shards."""
    rng = np.random.default_rng(0)
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    lengths = rng.integers(3, 9, N_UTTS)
    with open(tsv / "train.tsv", "w") as f:
        f.write("/audio\n")
        f.writelines(f"u{i}.wav\t{160 * n + 240}\n" for i, n in enumerate(lengths))
    labels = [rng.integers(0, K - 1, n) for n in lengths]  # K-1 is never used
    feat, lab = tmp_path / "feat", tmp_path / "lab"
    lab.mkdir()
    for r in range(NSHARD):
        s, e = shard_range(N_UTTS, NSHARD, r)
        with NpyStreamWriter(feat_paths(feat, "train", r, NSHARD)[0], dim=2) as w:
            for n in lengths[s:e]:
                w.append(np.zeros((n, 2), np.float32))
        with atomic_output(feat_paths(feat, "train", r, NSHARD)[1]) as f:
            f.writelines(f"{n}\n" for n in lengths[s:e])
        with open(label_path(lab, "train", r, NSHARD), "w") as f:
            f.writelines(" ".join(map(str, x)) + "\n" for x in labels[s:e])
    return {"tsv": tsv, "feat": feat, "lab": lab, "labels": labels}


def _expected(labels):
    return "".join(" ".join(map(str, x)) + "\n" for x in labels)


def test_merge_rank_order_and_dict(shards):
    out = merge_labels.main(str(shards["lab"]), "train", NSHARD, tsv_dir=str(shards["tsv"]),
                            feat_dir=str(shards["feat"]), n_clusters=K)
    assert out["labels"].read_text() == _expected(shards["labels"])
    assert out["dict"].read_text() == "".join(f"{i} 1\n" for i in range(K))
    assert out["n_utts"] == N_UTTS and out["n_clusters"] == K


def test_rerun_rewrites_not_appends(shards):
    for _ in range(3):
        out = merge_labels.main(str(shards["lab"]), "train", NSHARD, n_clusters=K)
    assert out["labels"].read_text() == _expected(shards["labels"])
    assert len(out["dict"].read_text().splitlines()) == K
    assert sorted(p.name for p in shards["lab"].iterdir()) == sorted(
        [f"train_{r}_{NSHARD}.km" for r in range(NSHARD)] + ["train.km", "dict.km.txt"])


def test_k_from_max_label_warns(shards, caplog):
    out = merge_labels.main(str(shards["lab"]), "train", NSHARD)
    top = max(int(x.max()) for x in shards["labels"])
    assert out["n_clusters"] == top + 1
    assert "largest label + 1" in caplog.text


def test_k_from_model(shards, tmp_path):
    import joblib
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=K, n_init=1, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 2)))
    joblib.dump(km, tmp_path / "km.mdl")
    out = merge_labels.main(str(shards["lab"]), "train", NSHARD, km_path=str(tmp_path / "km.mdl"))
    assert out["n_clusters"] == K


def test_missing_shard_refused(shards):
    label_path(shards["lab"], "train", 1, NSHARD).unlink()
    with pytest.raises(UserError, match=f"train_1_{NSHARD}.km"):
        merge_labels.main(str(shards["lab"]), "train", NSHARD, n_clusters=K)
    assert not (shards["lab"] / "train.km").exists()


def test_line_count_mismatch_with_manifest(shards):
    p = label_path(shards["lab"], "train", 2, NSHARD)
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(UserError, match=rf"train_2_{NSHARD}.km has 1 lines but shard 2/{NSHARD}"):
        merge_labels.main(str(shards["lab"]), "train", NSHARD, tsv_dir=str(shards["tsv"]), n_clusters=K)


def test_frames_mismatch_with_features(shards):
    p = label_path(shards["lab"], "train", 0, NSHARD)
    lines = p.read_text().splitlines()
    lines[1] += " 3"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"train_0_{NSHARD}.km:2: 7 labels but .*train_0_{NSHARD}.len:2 says 6 frames"):
        merge_labels.main(str(shards["lab"]), "train", NSHARD, feat_dir=str(shards["feat"]), n_clusters=K)


def test_bad_and_out_of_range_labels(shards):
    p = label_path(shards["lab"], "train", 1, NSHARD)
    good = p.read_text()
    p.write_text(good.replace(good.split()[0], "x7", 1))
    with pytest.raises(UserError, match=rf"train_1_{NSHARD}.km:1: 'x7' is not an integer"):
        merge_labels.main(str(shards["lab"]), "train", NSHARD, n_clusters=K)
    p.write_text(good)
    with pytest.raises(UserError, match="out of range for K=3"):
        merge_labels.main(str(shards["lab"]), "train", NSHARD, n_clusters=3)


def test_missing_final_newline_not_glued(shards):
    p = label_path(shards["lab"], "train", 0, NSHARD)
    p.write_text(p.read_text().rstrip("\n"))
    out = merge_labels.main(str(shards["lab"]), "train", NSHARD, tsv_dir=str(shards["tsv"]), n_clusters=K)
    assert out["labels"].read_text() == _expected(shards["labels"])


def test_cli_exit_2(shards):
    label_path(shards["lab"], "train", 0, NSHARD).unlink()
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.merge_labels", str(shards["lab"]), "train",
                           str(NSHARD), "--n-clusters", str(K)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "missing label shard" in proc.stderr and "Traceback" not in proc.stderr


def test_checks_run_without_options_on_fairseqs_command_line(shards):
    """`merge_labels LAB_DIR SPLIT NSHARD` alone: an empty line is refused, and a manifest and .len files
    in LAB_DIR (one data folder, fairseq's layout) are checked against without --tsv-dir/--feat-dir."""
    import shutil

    lab, cmd = shards["lab"], [sys.executable, "-m", "simple_kmeans.merge_labels", str(shards["lab"]), "train",
                               str(NSHARD), "--n-clusters", str(K)]
    p = label_path(lab, "train", 1, NSHARD)
    good = p.read_text()
    p.write_text("\n" + good)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and f"train_1_{NSHARD}.km:1: an empty line" in proc.stderr, proc.stderr
    p.write_text(good)
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode == 0
    shutil.copy(shards["tsv"] / "train.tsv", lab / "train.tsv")
    p.write_text("".join(good.splitlines(keepends=True)[:-1]))  # one utterance short
    with pytest.raises(UserError, match=rf"train_1_{NSHARD}.km has \d+ lines but shard 1/{NSHARD}"):
        merge_labels.main(str(lab), "train", NSHARD, n_clusters=K)
    p.write_text(good)
    (lab / "train.tsv").unlink()
    for r in range(NSHARD):
        shutil.copy(feat_paths(shards["feat"], "train", r, NSHARD)[1], feat_paths(lab, "train", r, NSHARD)[1])
    lines = good.splitlines()
    lines[0] += " 3"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"train_1_{NSHARD}.km:1: \d+ labels but .*train_1_{NSHARD}.len:1"):
        merge_labels.main(str(lab), "train", NSHARD, n_clusters=K)
