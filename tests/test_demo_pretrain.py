"""scripts/demo_pretrain.py (label-pipeline demo folder -> speakers, pitch, dhubert_tiny, probe) and a
toy-size run of scripts/dhubert_experiment.py, which builds on its helpers."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fairseq_ext.base.errors import UserError


def load_script():
    spec = importlib.util.spec_from_file_location("demo_pretrain_under_test", REPO / "scripts" / "demo_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The label pipeline's demo output (4 speakers x 12 utterances, MFCC labels)."""
    from simple_kmeans import pipeline

    out = tmp_path_factory.mktemp("demo")
    pipeline.main(demo=str(out), nshard=1, n_clusters=20, quiet=True)
    return out


def test_main_job_trains_probes_and_skips_on_rerun(demo_dir, capsys):
    dp = load_script()
    result = dp.main(str(demo_dir), max_update=6)
    printed = capsys.readouterr().out
    assert result["updates"] == 6 and dp.checkpoint_updates(result["ckpt"]) == 6
    valid = result["valid"]
    assert int(valid["valid_num_updates"]) == 6 and math.isfinite(float(valid["valid_loss"]))
    assert 0.0 <= float(valid["valid_spk_acc"]) <= 1.0
    layers = result["probe"]["layers"]
    assert sorted(layers) == ["1", "2"]
    for row in layers.values():
        assert 0.0 <= row["spk_acc"] <= 1.0 and 0.0 <= row["pnmi"] <= 1.0 and row["n_speakers"] == 4
    assert "masked-prediction accuracy" in printed and "adversary speaker accuracy" in printed
    assert "spk acc" in printed and "PNMI" in printed
    out = demo_dir / "dhubert"
    assert (out / "speakers" / "dict.spk.txt").read_text().split()[::2] == ["spk00", "spk01", "spk02", "spk03"]
    assert (out / "pitch" / "train.pitch_stats.json").is_file() and (out / "probe.json").is_file()
    log = out / "run" / "train.log"
    assert log.read_text().count("\n# ") == 1

    # the command line, rerun: every step is skipped, the report is printed again
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_pretrain.py"), str(demo_dir),
                           "--max-update", "6"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("speakers", "pitch_train", "pitch_valid", "pitch_stats", "probe"):
        assert f"skipping {step}: already done" in proc.stderr
    assert "skipping train:" in proc.stderr and "holds 6 updates" in proc.stderr
    assert "[already trained]" in proc.stdout and "PNMI" in proc.stdout
    assert log.read_text().count("\n# ") == 1  # no second training


def test_clear_errors(demo_dir, tmp_path):
    dp = load_script()
    with pytest.raises(UserError, match=r"not a finished label-pipeline demo .*simple_kmeans\.pipeline --demo"):
        dp.main(str(tmp_path / "nothing"), max_update=2)
    with pytest.raises(UserError, match="--max-update must be >= 1"):
        dp.main(str(demo_dir), max_update=0)
    if not (demo_dir / "dhubert" / "run" / "checkpoints" / "checkpoint_last.pt").exists():
        pytest.skip("needs the checkpoint of the first test")
    # new labels under an existing checkpoint: refuse to mix runs instead of silently resuming
    labels = demo_dir / "labels" / "train.km"
    original = labels.read_text()
    try:
        lines = original.splitlines()
        lines[0] = " ".join("0" for _ in lines[0].split())
        labels.write_text("\n".join(lines) + "\n")
        with pytest.raises(UserError, match="trained on other inputs .*--force"):
            dp.main(str(demo_dir), max_update=6)
    finally:
        labels.write_text(original)
    # labels whose lengths fit neither 100 Hz nor 50 Hz frames
    bad = tmp_path / "bad"
    for sub in ("manifest", "labels", "corpus"):
        (bad / sub).mkdir(parents=True)
    for split in ("train", "valid"):
        (bad / "manifest" / f"{split}.tsv").write_text((demo_dir / "manifest" / f"{split}.tsv").read_text())
        n = len((demo_dir / "manifest" / f"{split}.tsv").read_text().splitlines()) - 1
        (bad / "labels" / f"{split}.km").write_text("1 2 3\n" * n)
    (bad / "labels" / "dict.km.txt").write_text("0 1\n1 1\n2 1\n3 1\n")
    (bad / "corpus" / "speakers.tsv").write_text((demo_dir / "corpus" / "speakers.tsv").read_text())
    with pytest.raises(UserError, match=r"train\.km:1: 3 labels for \d+ samples fit neither 100 Hz"):
        dp.main(str(bad), max_update=2)


def test_experiment_script_smoke(tmp_path):
    """scripts/dhubert_experiment.py end to end at toy size: both variants trained with the same settings."""
    spec = importlib.util.spec_from_file_location("dhubert_experiment_under_test",
                                                  REPO / "scripts" / "dhubert_experiment.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    out = exp.main(str(tmp_path / "x"), max_update=3, n_speakers=3, utts_per_speaker=6, heldout_per_speaker=3,
                   n_clusters=8, json_path=str(tmp_path / "r.json"))
    results = out["results"]
    assert sorted(name.split("_")[0] for name in results) == ["dhubert", "plain"]
    plain, dh = (results[n][0] for n in sorted(results, key=lambda n: not n.startswith("plain")))
    assert [a for a in plain["overrides"] if "spk_layer" in a] == ["model.spk_layer=0"]
    shared = [a for a in plain["overrides"] if not a.startswith(("task.load_", "model.", "criterion", "~"))]
    assert all(a in dh["overrides"] for a in shared)  # same data, sizes, updates, batch and seed
    for run in (plain, dh):
        assert sorted(run["eval"]) == ["0", "1", "2"] and math.isfinite(run["mask_acc"])
        for row in run["eval"].values():
            assert 0 <= row["spk_acc"] <= 1 and 0 <= row["pnmi"] <= 1 and row["pitch_rmse"] > 0
    assert "valid_spk_acc" in dh["valid"] and "valid_spk_acc" not in plain["valid"]
    assert (tmp_path / "x" / "manifest" / "valid.tsv").read_text().count("\n") == 1 + 3 * 3
    assert "| plain" in out["report"] and "| dhubert" in out["report"] and (tmp_path / "r.json").is_file()
