"""The demo's pre-training (simple_kmeans.recipes.demo: label-pipeline demo folder -> speakers, pitch,
dhubert_tiny, probe; scripts/demo_pretrain.py is its command line) and a toy-size run of the dhubert
experiment (simple_kmeans.recipes.dhubert_experiment), which shares its steps."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.train_run import checkpoint_updates
from simple_kmeans.recipes import demo as dp


def training_sessions(log: Path) -> int:
    """Training sessions in a run's train.log: one ``# TIME COMMAND`` header line each."""
    return sum(line.startswith("# ") for line in log.read_text().splitlines())


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The label pipeline's demo output (4 speakers x 12 utterances, MFCC labels)."""
    from simple_kmeans import pipeline

    out = tmp_path_factory.mktemp("demo")
    pipeline.main(demo=str(out), nshard=1, n_clusters=20, quiet=True)
    return out


def test_main_job_trains_probes_and_skips_on_rerun(demo_dir, capsys):
    result = dp.main(str(demo_dir), max_update=6)
    printed = capsys.readouterr().out
    assert result["updates"] == 6 and checkpoint_updates(result["ckpt"]) == 6
    valid = result["valid"]
    assert int(valid["valid_num_updates"]) == 6 and math.isfinite(float(valid["valid_loss"]))
    assert 0.0 <= float(valid["valid_spk_acc"]) <= 1.0
    layers = result["probe"]["layers"]
    assert sorted(layers) == ["1", "2"]
    for row in layers.values():
        assert 0.0 <= row["spk_acc"] <= 1.0 and 0.0 <= row["pnmi"] <= 1.0 and row["n_speakers"] == 4
    assert "masked-prediction accuracy" in printed and "speaker adversary (layer" in printed
    n_valid = len(read_manifest(demo_dir / "manifest" / "valid.tsv"))
    assert f"on {n_valid} validation utterances" in printed and "uniform chance 1/4 = 0.2500" in printed
    assert "chance ~" not in printed  # one chance per number, each named
    tblog = demo_dir / "dhubert" / "run" / "tblog"
    assert f"tensorboard --logdir {tblog}" in printed
    assert list(tblog.glob("train*/events.out.tfevents.*")) and list(tblog.glob("valid*/events.out.tfevents.*"))
    assert "spk acc" in printed and "PNMI" in printed
    out = demo_dir / "dhubert"
    assert (out / "speakers" / "dict.spk.txt").read_text().split()[::2] == ["spk00", "spk01", "spk02", "spk03"]
    assert (out / "pitch" / "train.pitch_stats.json").is_file() and (out / "probe.json").is_file()
    log = out / "run" / "train.log"
    assert training_sessions(log) == 1

    # the command line, rerun: every step is skipped, the report is printed again
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_pretrain.py"), str(demo_dir),
                           "--max-update", "6"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("speakers", "pitch_train", "pitch_valid", "pitch_stats", "probe"):
        assert f"skipping {step}: already done" in proc.stderr
    assert "skipping train:" in proc.stderr and "holds 6 updates" in proc.stderr
    assert "[already trained]" in proc.stdout and "PNMI" in proc.stdout
    assert training_sessions(log) == 1  # no second training


def test_clear_errors(demo_dir, tmp_path):
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
    """The dhubert experiment end to end at toy size: both variants trained with the same settings."""
    from simple_kmeans.recipes import dhubert_experiment as exp

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
    # the labels come from the label pipeline (its folder, stamps and quality report)
    labels = tmp_path / "x" / "labels"
    assert (labels / ".stamps" / "kmeans.json").is_file() and (labels / "quality.json").is_file()
    assert len((labels / "labels" / "dict.km.txt").read_text().splitlines()) == 8
    assert "| plain" in out["report"] and "| dhubert" in out["report"] and (tmp_path / "r.json").is_file()


def test_parse_log_reads_fairseq_json_records():
    from fairseq_ext.train_run import TrainResult, parse_log

    text = ("# 2026-01-01 00:00:00 fairseq-hydra-train ...\n"
            '[2026-01-01 00:00:01,000][train_inner][INFO] - {"epoch": 1, "update": 0.5, "loss": "9.1"}\n'
            "[2026-01-01 00:00:02,000][fairseq.trainer][INFO] - begin training epoch 2\n"
            '[2026-01-01 00:00:03,000][valid][INFO] - {"epoch": 1, "valid_loss": "8.5", "valid_num_updates": "2"}\n'
            '[2026-01-01 00:00:04,000][valid][INFO] - {"epoch": 2, "valid_loss": "8.0", "valid_num_updates": "4"}\n')
    records = parse_log(text)
    assert [r["kind"] for r in records] == ["train_inner", "valid", "valid"]
    run = TrainResult(ckpt=Path("x.pt"), updates=4, records=records)
    assert run.last("valid")["valid_loss"] == "8.0" and run.last("train") is None


@pytest.mark.parametrize("name", ["demo_pretrain", "dhubert_experiment", "kws_sweep", "speaker_experiment"])
def test_recipe_scripts_are_thin_entry_points(name):
    """Each script is argparse + a call into simple_kmeans.recipes: short, documented, runnable."""
    path = REPO / "scripts" / f"{name}.py"
    text = path.read_text()
    assert len(text.splitlines()) <= 120 and text.split('"""', 2)[1].startswith("Usage:")
    assert "from simple_kmeans.recipes import" in text
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "Usage:" in out.stdout, out.stderr[-2000:]


def test_summary_names_the_validation_size_and_chance():
    from simple_kmeans.recipes.demo import summary_lines

    valid = {"valid_num_updates": "30", "valid_loss": "9.1", "valid_correct_m_0": 0.3, "valid_spk_acc": "0.4",
             "valid_grl_lambda": "1", "valid_pitch_rmse": "0.7", "valid_vuv_acc": "0.86"}
    text = "\n".join(summary_lines(valid, n_speakers=4, n_valid=5, spk_layer=1))
    assert "on 5 validation utterances" in text and "2 of 5 utterances" in text
    assert "uniform chance 1/4 = 0.2500" in text and "adversary weight 1" in text
    assert "gradient reversal" not in text  # the shipped adversary is the confusion loss
    assert summary_lines(None, 4) == ["(no validation record in the log)"]
