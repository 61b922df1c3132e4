"""Reruns of fairseq-ext-labels over an earlier output folder leave exactly what a fresh run leaves
(byte for byte): after audio edited in place, another K, another --nshard, without --skip-bad.
Also the input identity (file_fingerprint) itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_ext.base.steps import file_fingerprint
from simple_kmeans import pipeline

ARGS = dict(jobs=1, valid_percent=0.25, quiet=True)


def _snapshot(out: Path):
    """Every output file (path -> bytes) except the stamps (they hold timings) and the lock."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in (".stamps", ".lock")}


def _rerun_equals_fresh(audio: Path, out: Path, first: dict, second: dict, between=None):
    """Run ``first`` then (after ``between()``) ``second`` in ``out``; then ``second`` in a fresh ``out``."""
    pipeline.main(str(audio), str(out), **ARGS, **first)
    if between is not None:
        between()
    rerun = pipeline.main(str(audio), str(out), **ARGS, **second)
    got = _snapshot(out)
    shutil.rmtree(out)
    pipeline.main(str(audio), str(out), **ARGS, **second)
    fresh = _snapshot(out)
    assert sorted(got) == sorted(fresh)  # no file left over from the first run
    for name in fresh:
        assert got[name] == fresh[name], name
    return rerun


@pytest.fixture
def audio(demo_corpus, tmp_path):
    dest = tmp_path / "audio"
    subprocess.run(["cp", "-a", str(demo_corpus / "wav"), str(dest)], check=True)
    return dest


def test_audio_edited_in_place_is_redone(audio, tmp_path):
    """Same file names, same sample counts (the manifest text is unchanged), other samples."""
    files = sorted(audio.rglob("*.wav"))[:3]

    def edit():
        for i, path in enumerate(files):
            info = sf.info(str(path))
            wav, sr = sf.read(str(path), dtype="float32")
            rng = np.random.default_rng(i)
            sf.write(str(path), (0.5 * wav + 0.05 * rng.standard_normal(len(wav))).clip(-1, 1).astype("float32"),
                     sr, subtype=info.subtype)
            os.utime(path, ns=(0, 0))  # even with the old time kept the same, the content counts

    kw = dict(nshard=2, n_clusters=8)
    rerun = _rerun_equals_fresh(audio, tmp_path / "out", kw, kw, between=edit)
    assert "features/train_0_2" in rerun["ran"] and "kmeans" in rerun["ran"]


def test_other_k_rerun_equals_fresh_run(audio, tmp_path):
    rerun = _rerun_equals_fresh(audio, tmp_path / "out", dict(nshard=2, n_clusters=8), dict(nshard=2, n_clusters=5))
    assert "kmeans" in rerun["ran"] and "features/train_0_2" in rerun["skipped"]


def test_other_nshard_rerun_equals_fresh_run(audio, tmp_path):
    """The shards (features, labels, stamps) of the earlier --nshard 3 are gone."""
    out = tmp_path / "out"
    _rerun_equals_fresh(audio, out, dict(nshard=3, n_clusters=8), dict(nshard=2, n_clusters=8))
    assert not list((out / "feat").glob("*_3.*")) and not list((out / ".stamps").glob("*_3.json"))


def test_rerun_without_skip_bad_drops_kept_manifest(audio, tmp_path):
    out = tmp_path / "out"
    _rerun_equals_fresh(audio, out, dict(nshard=2, n_clusters=8, skip_bad=True, espnet=True),
                        dict(nshard=2, n_clusters=8))
    assert not (out / "kept_manifest").exists() and not (out / "espnet").exists()
    assert not list((out / "feat").glob("*.skipped.tsv"))


def test_file_fingerprint_sees_content_size_and_time(tmp_path):
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"a" * 1000)
    data = bytearray(np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
    big.write_bytes(bytes(data))
    fps = {p: file_fingerprint(p) for p in (small, big)}
    for path, offset in ((small, 500), (big, len(data) // 2), (big, 10), (big, len(data) - 10)):
        st = path.stat()
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0xFF
        path.write_bytes(bytes(raw))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same time, other bytes
        assert file_fingerprint(path) != fps[path], (path.name, offset)
        raw[offset] ^= 0xFF
        path.write_bytes(bytes(raw))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert file_fingerprint(path) == fps[path]
    os.utime(small, ns=(0, 0))
    assert file_fingerprint(small) != fps[small]
