"""Thin entry points in scripts/ and the library functions they call: kws corpus settings, PASE
statistics config loading and summary, speaker-inference errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fairseq_ext.base.errors import UserError

REPO = Path(__file__).resolve().parents[1]
THIN = ["make_kws_corpus", "pase_stats", "speaker_infer", "run_shards"]


@pytest.mark.parametrize("name", THIN)
def test_script_is_a_thin_entry_point(name):
    path = REPO / "scripts" / f"{name}.py"
    text = path.read_text()
    assert len(text.splitlines()) <= 120, f"{path} has {len(text.splitlines())} lines"
    doc = text.split('"""', 2)[1]
    assert doc.startswith("Usage:"), doc[:80]
    assert "spec_from_file_location" not in text and "load_script(" not in text
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "Usage:" in out.stdout


def test_snr_range():
    from simple_kmeans.recipes.kws_corpus import parse_snr_range

    assert parse_snr_range("5,25") == (5.0, 25.0)
    assert parse_snr_range("7") == (7.0, 7.0)
    with pytest.raises(UserError, match="LOW must not exceed HIGH"):
        parse_snr_range("9,1")
    with pytest.raises(UserError, match="give LOW,HIGH"):
        parse_snr_range("loud")


def test_kws_corpus_refuses_bad_settings(tmp_path):
    from simple_kmeans.recipes.kws_corpus import main as make_kws_corpus

    with pytest.raises(UserError, match="leaves no training voice"):
        make_kws_corpus(str(tmp_path / "c"), keywords=2, voices=2, valid_voices=1, test_voices=1)
    with pytest.raises(UserError, match="--keywords must be in 2..10"):
        make_kws_corpus(str(tmp_path / "c"), keywords=11)
    assert not (tmp_path / "c").exists()


def test_training_config_overrides(tmp_path):
    from fairseq_ext.pase_stats import load_training_config

    yaml = tmp_path / "pase.yaml"
    yaml.write_text("task:\n  chunk_size: 16000\nmodel:\n  workers:\n    lps: {}\n    mfcc: {n_mfcc: 20}\n")
    cfg = load_training_config(str(yaml), ["~model.workers.mfcc", "+model.workers.fbank={n_mels:40}",
                                           "task.chunk_size=8000"])
    assert sorted(cfg.model.workers) == ["fbank", "lps"]
    assert cfg.model.workers.fbank.n_mels == 40 and cfg.task.chunk_size == 8000
    with pytest.raises(UserError, match="bad --set override"):
        load_training_config(str(yaml), ["model.workers.fbank={n_mels:"])
    with pytest.raises(UserError, match="does not exist"):
        load_training_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "child.yaml").write_text("defaults:\n  - base\nmodel: {}\n")
    with pytest.raises(UserError, match="hydra defaults list"):
        load_training_config(str(tmp_path / "child.yaml"))


def test_pase_stats_command_line(demo_manifest, tmp_path):
    """The script writes the file and prints one summary line per normalised worker."""
    out = tmp_path / "stats.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pase_stats.py"), str(demo_manifest), str(out), "--config",
         str(REPO / "config/pretrain/pase_tiny.yaml"), "--max-chunks", "4", "--set", "~model.workers.mfcc"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["lps", "dim=129"], ["prosody", "dim=4"]]
    assert out.is_file()
    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pase_stats.py"), str(demo_manifest), str(out), "--config",
         str(tmp_path / "missing.yaml")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "missing.yaml does not exist" in bad.stderr


def test_speaker_inference_names_missing_files(tmp_path):
    from fairseq_ext.speaker_inference import write_predictions

    with pytest.raises(UserError, match="checkpoint .* does not exist"):
        write_predictions(str(tmp_path / "none.pt"), str(tmp_path / "in.tsv"), str(tmp_path / "out.csv"))
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(UserError, match="give a testdata.json or a manifest .tsv"):
        write_predictions(str(tmp_path / "ckpt.pt"), str(tmp_path / "in.tsv"), str(tmp_path / "out.csv"))
    (tmp_path / "in.tsv").write_text("/\n")
    with pytest.raises(UserError, match="--batch-size must be >= 1"):
        write_predictions(str(tmp_path / "ckpt.pt"), str(tmp_path / "in.tsv"), str(tmp_path / "out.csv"),
                          batch_size=0)
