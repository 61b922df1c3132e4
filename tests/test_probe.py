"""Layer probes (fairseq_ext/probe.py, scripts/probe.py): speaker ID, PNMI / purity of k-means codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_ext.probe import (
    ProbeOptions,
    code_metrics,
    format_table,
    parse_layers,
    run_probe,
    run_probe_report,
    speaker_id_probe,
    speaker_split,
)
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "hubert.pt", label_rate=50,
                                       normalize=True, encoder_layers=3)


def _phones(demo_corpus):
    return {u: p.split(",") for u, p in (line.split("\t") for line in (demo_corpus / "phones.tsv").read_text().splitlines())}


def test_speaker_split_is_deterministic_and_per_speaker():
    speakers = ["a"] * 8 + ["b"] * 4 + ["c"]
    train, test = speaker_split(speakers, 0.25, seed=3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(13))
    names = np.asarray(speakers)
    assert sorted(names[test].tolist()) == ["a", "a", "b"]  # 25% of a and b; c (1 utterance) train-only
    again = speaker_split(speakers, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, speaker_split(speakers, 0.25, seed=4)[1])


def test_speaker_probe_separates_informative_from_random_features():
    """The probe can fail: speaker-bearing vectors are recognised, random vectors stay at chance."""
    rng = np.random.default_rng(0)
    n_spk, per_spk, dim = 6, 8, 32
    speakers = [f"s{i}" for i in range(n_spk) for _ in range(per_spk)]
    centroids = rng.standard_normal((n_spk, dim))
    informative = np.repeat(centroids, per_spk, axis=0) + 0.7 * rng.standard_normal((n_spk * per_spk, dim))
    train, test = speaker_split(speakers, 0.25, seed=0)
    res = speaker_id_probe(informative, speakers, train, test)
    assert res["spk_acc"] >= 0.9
    assert res["spk_chance"] == pytest.approx(1 / n_spk)
    assert (res["n_train"], res["n_test"], res["n_speakers"]) == (36, 12, 6)
    accs = []
    for seed in range(8):
        tr, te = speaker_split(speakers, 0.25, seed=seed)
        accs.append(speaker_id_probe(rng.standard_normal(informative.shape), speakers, tr, te, seed)["spk_acc"])
    assert np.mean(accs) < 1 / n_spk + 0.15
    with pytest.raises(UserError, match="at least 2 speakers"):
        speaker_id_probe(informative[:8], speakers[:8], *speaker_split(speakers[:8]))


def test_code_metrics_match_definitions():
    codes = {"u": np.array([0, 0, 1, 1])}
    phones = {"u": ["a", "a", "a", "a", "b", "b", "b", "b"]}  # upsampled codes line up exactly
    m = code_metrics(codes, phones, {"u": "spk"}, phone_upsample=2)
    assert m["pnmi"] == pytest.approx(1.0, abs=1e-6)
    assert m["phone_purity"] == pytest.approx(1.0) and m["cluster_purity"] == pytest.approx(1.0)
    assert m["spk_purity"] == pytest.approx(1.0)  # one speaker: every code is pure
    m = code_metrics({"u": np.array([0, 1, 0, 1])}, phones, None, phone_upsample=2)
    assert m["pnmi"] == pytest.approx(0.0, abs=1e-6) and m["phone_purity"] == pytest.approx(0.5)
    with pytest.raises(UserError, match="phone references"):
        code_metrics(codes, {"other": ["a"]}, None)


def test_run_probe_mfcc_versus_random_frames(demo_corpus, demo_manifest):
    """Pipeline sanity: MFCC frames give phone-informative codes, random frames do not."""
    from simple_kmeans.mfcc import mfcc_features

    manifest = read_manifest(demo_manifest / "train.tsv")
    uids = [manifest.uid(e) for e in manifest.entries]
    table = dict(line.split("\t") for line in (demo_corpus / "speakers.tsv").read_text().splitlines())
    speakers = [table[u] for u in uids]
    wavs = [sf.read(manifest.audio_path(e), dtype="float32")[0] for e in manifest.entries]
    rng = np.random.default_rng(0)
    feats = [{0: mfcc_features(w)[:, :13], 1: rng.standard_normal((len(mfcc_features(w)), 13)).astype(np.float32)}
             for w in wavs]
    opts = ProbeOptions(n_clusters=16, seed=0, phone_upsample=1, speaker_purity=True)
    res = run_probe(uids, feats.__getitem__, [0, 1], speakers, _phones(demo_corpus), opts)
    assert res[0]["pnmi"] > 0.3 and res[1]["pnmi"] < 0.1, res
    assert res[0]["phone_purity"] > res[1]["phone_purity"] + 0.15
    for r in res.values():
        for key in ("spk_acc", "pnmi", "phone_purity", "cluster_purity", "spk_purity", "spk_nmi"):
            assert 0.0 <= r[key] <= 1.0
    # sampled k-means frames + a second pass over the features: still all frames get codes
    total = sum(len(f[0]) for f in feats)
    sampled = run_probe(uids, feats.__getitem__, [0], None, _phones(demo_corpus),
                        ProbeOptions(n_clusters=16, kmeans_frames=total // 3, phone_upsample=1),
                        expected_frames=total)
    assert sampled[0]["pnmi"] > 0.3
    assert "spk_acc" not in sampled[0]
    table_text = format_table(res)
    assert table_text.splitlines()[0].split() == ["layer", "spk", "acc", "PNMI", "phn", "pur", "cls", "pur",
                                                  "spk", "pur", "spk", "NMI"]


def test_probe_reads_layers_through_the_encoder_interface(tiny_ckpt, demo_corpus, demo_manifest):
    """The probe's per-utterance features are the encoder interface's (fairseq_ext.encoder), every layer
    as ``extract_features(output_layer=L)`` gives it (tests/test_encoder.py checks that in depth)."""
    import torch
    import torch.nn.functional as F

    from fairseq_ext.encoder import ChunkedReader, load_upstream

    upstream = load_upstream(str(tiny_ckpt))
    reader = ChunkedReader(upstream, [0, 1, 3])
    manifest = read_manifest(demo_manifest / "train.tsv")
    wav = sf.read(manifest.audio_path(manifest.entries[0]), dtype="float32")[0]
    feats = reader.extract([wav])[0]
    source = F.layer_norm(torch.from_numpy(wav), wav.shape)[None]  # the checkpoint's task normalises
    with torch.no_grad():
        ref = upstream.model.extract_features(source, padding_mask=None, mask=False, output_layer=3)[0][0]
    np.testing.assert_array_equal(feats[3], ref.numpy())
    assert reader.extract([np.zeros(300, dtype=np.float32)])[0][1].shape == (0, 64)  # shorter than one frame
    assert parse_layers("all", 3) == [1, 2, 3] and parse_layers("3,0", 3) == [0, 3]
    with pytest.raises(UserError, match="out of range"):
        ChunkedReader(upstream, [4])


def test_cli_end_to_end(tiny_ckpt, demo_corpus, demo_manifest, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    help_out = subprocess.run([sys.executable, "scripts/probe.py", "--help"], capture_output=True, text=True,
                              cwd=REPO, env=env)
    assert help_out.returncode == 0 and "Usage:" in help_out.stdout
    spk_file = tmp_path / "train.spk"
    manifest = read_manifest(demo_manifest / "train.tsv")
    table = dict(line.split("\t") for line in (demo_corpus / "speakers.tsv").read_text().splitlines())
    spk_file.write_text("".join(table[manifest.uid(e)] + "\n" for e in manifest.entries))
    out_json = tmp_path / "probe.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "probe.py"), str(demo_manifest / "train.tsv"), str(tiny_ckpt),
         "--layers", "0,1,3", "--spk-file", str(spk_file), "--phones", str(demo_corpus / "phones.tsv"),
         "--n-clusters", "10", "--speaker-purity", "--json", str(out_json), "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.split()[:3] == ["layer", "spk", "acc"] for line in lines), run.stdout
    assert [line.split()[0] for line in lines[-3:]] == ["0", "1", "3"]
    assert "chance 0.3333" in run.stdout
    report = json.loads(out_json.read_text())
    assert sorted(report["layers"]) == ["0", "1", "3"]
    for r in report["layers"].values():
        assert 0 <= r["spk_acc"] <= 1 and 0 <= r["pnmi"] <= 1
        assert 0 <= r["phone_purity"] <= 1 and 0 <= r["cluster_purity"] <= 1 and 0 <= r["spk_purity"] <= 1
        assert (r["n_speakers"], r["n_train"], r["n_test"]) == (3, 9, 3)
    # a bad layer is a user error naming the valid range (in process: one model load less)
    with pytest.raises(UserError, match=r"--layers '7': the model has layers 1\.\.3"):
        run_probe_report(str(demo_manifest / "train.tsv"), str(tiny_ckpt), layers="7", spk_file=str(spk_file),
                         device="cpu")
