"""End-to-end: fairseq-hydra-train with config/pretrain/dhubert_tiny on the demo corpus.

Trains a few updates (loss finite and falling, validation, checkpoints), resumes from
checkpoint_last.pt (the update count continues) and reloads the result with fairseq_ext.load_model.
A checkpoint saved before issue 11 (tests/data/dhubert_tiny_before_issue11.pt: 300 updates of
dhubert_tiny on a 4-speaker demo corpus with 100 clusters, optimizer state stripped; its config has
the old ``grl_*`` keys) still loads and trains on.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO, write_manifest
from test_dhubert_data import (energy_labels, pitch_from_f0, write_km_labels, write_pitch, write_pitch_stats,
                               write_speakers)

N_CLUSTERS = 8
OLD_CHECKPOINT = REPO / "tests" / "data" / "dhubert_tiny_before_issue11.pt"


def prepare_data(corpus: Path, out: Path, n_clusters: int = N_CLUSTERS) -> Dict[str, Path]:
    """Manifests (train: all, valid: one utterance in four), 100 Hz energy labels, speakers, pitch."""
    wavs = sorted((corpus / "wav").rglob("*.wav"))
    f0 = dict(line.rstrip("\n").split("\t") for line in open(corpus / "f0.tsv"))
    spk = dict(line.rstrip("\n").split("\t") for line in open(corpus / "speakers.tsv"))
    for split, files in (("train", wavs), ("valid", wavs[::4])):
        write_manifest(corpus / "wav", out / "manifest" / f"{split}.tsv", files)
        write_km_labels(out / "labels", split, [energy_labels(sf.read(p, dtype="float32")[0], n_clusters)
                                                for p in files], n_clusters)
        names = [spk[p.stem] for p in files]
        write_speakers(out / "labels", split, names, sorted(set(spk.values())) if split == "train" else None)
        pitches = [pitch_from_f0(np.array([float(v) for v in f0[p.stem].split(",")])) for p in files]
        write_pitch(out / "pitch", split, pitches, nshard=2 if split == "train" else 1)
        if split == "train":
            write_pitch_stats(out / "pitch", split, pitches, names)
    return {"data": out / "manifest", "labels": out / "labels", "pitch": out / "pitch"}


def train(cwd: Path, paths: Dict[str, Path], max_update: int, overrides: Sequence[str] = (
        "model.adv_warmup_updates=10", "model.adv_weight=1.0")) -> List[Dict]:
    exe = shutil.which("fairseq-hydra-train")
    cmd = ([exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]) + [
        "--config-dir", str(REPO / "config" / "pretrain"), "--config-name", "dhubert_tiny", "+data=iter1",
        f"task.data={paths['data']}", f"task.label_dir={paths['labels']}", f"task.pitch_dir={paths['pitch']}",
        f"common.user_dir={REPO / 'fairseq_ext'}", "common.cpu=true", "common.fp16=false",
        "dataset.num_workers=0", "dataset.required_batch_size_multiple=1",
        f"optimization.max_update={max_update}", f"hydra.run.dir={cwd / 'run'}", *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    records = []
    for line in out.splitlines():
        m = re.search(r"\[(train_inner|valid|train)\]\[INFO\] - (\{.*\})\s*$", line)
        if m:
            records.append({"kind": m.group(1), **json.loads(m.group(2)), "_log": out})
    return records


def test_train_validate_resume_reload(demo_corpus, tmp_path):
    paths = prepare_data(demo_corpus, tmp_path / "data")
    logs = train(tmp_path, paths, max_update=12)
    inner = [r for r in logs if r["kind"] == "train_inner"]
    losses = [float(r["loss"]) for r in inner]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    for key in ("loss_m_0", "loss_spk", "loss_pitch", "loss_vuv", "spk_acc", "pitch_rmse", "vuv_acc"):
        assert math.isfinite(float(inner[-1][key])), key
    lambdas = [float(r["grl_lambda"]) for r in inner]
    assert lambdas == sorted(lambdas) and 0 <= lambdas[0] < 0.5 < lambdas[-1] <= 1.0  # DANN over 10 updates
    valid = [r for r in logs if r["kind"] == "valid"]
    assert valid and math.isfinite(float(valid[-1]["valid_loss"])) and "valid_spk_acc" in valid[-1]
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint_last.pt"
    assert ckpt.is_file() and (ckpt.parent / "checkpoint_best.pt").is_file()

    (tmp_path / "rerun").mkdir()
    rerun = [r for r in train(tmp_path / "rerun", paths, max_update=12) if r["kind"] == "train_inner"]
    assert [r["loss"] for r in rerun] == [r["loss"] for r in inner]  # seeded masks: a rerun is identical

    logs2 = train(tmp_path, paths, max_update=15)  # same run dir: resumes from checkpoint_last.pt
    inner2 = [r for r in logs2 if r["kind"] == "train_inner"]
    assert "Loaded checkpoint" in logs2[0]["_log"] and "@ 12 updates" in logs2[0]["_log"]
    assert [int(r["num_updates"]) for r in inner2] == [13, 14, 15]
    assert all(math.isfinite(float(r["loss"])) for r in inner2)
    assert float(inner2[0]["grl_lambda"]) == pytest.approx(2 / (1 + math.exp(-10)) - 1, abs=1e-4)  # schedule resumed

    import fairseq_ext
    from fairseq_ext.models.dhubert import DHubertModel

    model, cfg, task = fairseq_ext.load_model(str(ckpt))
    assert isinstance(model, DHubertModel) and task.speakers == ["spk00", "spk01", "spk02"]
    wav = torch.from_numpy(sf.read(sorted((demo_corpus / "wav").rglob("*.wav"))[0], dtype="float32")[0])
    with torch.no_grad():
        feats, _ = model.extract_features(wav[None], padding_mask=None, mask=False, output_layer=1)
    assert feats.shape == (1, (len(wav) - 400) // 320 + 1, 64) and torch.isfinite(feats).all()


def test_checkpoint_from_before_issue11_loads_and_trains_on(tmp_path, caplog):
    """The old checkpoint's stored config (grl_* keys, every field spelled out) loads with a
    deprecation warning, its weights load into the current model, and fairseq-hydra-train trains on
    from it; an old key on the command line (model.grl_lambda_max) still works and warns too."""
    import fairseq_ext
    from fairseq_ext.models.dhubert import DHubertModel
    from simple_kmeans import make_demo_corpus

    with caplog.at_level("WARNING", logger="fairseq_ext.models.dhubert"):
        model, cfg, task = fairseq_ext.load_model(str(OLD_CHECKPOINT))
    assert isinstance(model, DHubertModel) and task.speakers == ["spk00", "spk01", "spk02", "spk03"]
    assert (model.adv_schedule, model.adv_weight, model.adv_horizon) == ("dann", 1.0, 75)
    assert "model.grl_warmup_updates is deprecated: use model.adv_warmup_updates" in caplog.text
    assert model.spk_cond is not None and model.spk_memory.size == 1024 and model.spk_head.pool is None
    assert model.spk_cond.embedding.weight.abs().sum() > 0  # trained weights, not a fresh model
    wav = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        feats, _ = model.extract_features(wav, padding_mask=None, mask=False, output_layer=2)
    assert feats.shape == (1, 49, 64) and torch.isfinite(feats).all()

    corpus = make_demo_corpus.main(str(tmp_path / "corpus"), n_speakers=4, utts_per_speaker=3, seed=0)
    paths = prepare_data(Path(corpus), tmp_path / "data", n_clusters=100)  # the checkpoint's sizes
    logs = train(tmp_path, paths, max_update=3, overrides=(
        f"checkpoint.restore_file={OLD_CHECKPOINT}", "checkpoint.reset_optimizer=true",
        "checkpoint.reset_dataloader=true", "model.grl_lambda_max=0.5", "model.adv_schedule=constant"))
    inner = [r for r in logs if r["kind"] == "train_inner"]
    assert f"Loaded checkpoint {OLD_CHECKPOINT} (epoch 28" in logs[0]["_log"]  # strict state-dict load
    assert "model.grl_lambda_max is deprecated: use model.adv_weight" in logs[0]["_log"]
    assert [int(r["num_updates"]) for r in inner] == [1, 2, 3]  # reset_optimizer restarts the update count
    assert all(math.isfinite(float(r["loss"])) for r in inner)
    assert float(inner[0]["grl_lambda"]) == pytest.approx(0.5)  # the old key's value
