"""PASE through fairseq's real CLI: every worker on (plus one from a user file), falling loss,
resume from checkpoint_last.pt, and the frozen feature extractor on the trained checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]

WORKER_FILE = '''
"""A user-defined PASE worker: per-frame log energy (the example of docs/pase.md)."""
from dataclasses import dataclass

import torch

from fairseq_ext.modules.pase_workers import register_worker
from fairseq_ext.modules.pase_workers.base import RegressorConfig, RegressorWorker, frame_signal


@dataclass
class LogEnergyConfig(RegressorConfig):
    win_length: int = 400


@register_worker("log_energy", dataclass=LogEnergyConfig)
class LogEnergyWorker(RegressorWorker):
    def __init__(self, name, cfg, emb_dim, sample_rate, hop):
        super().__init__(name, cfg, emb_dim, sample_rate, hop, target_dim=1)

    @torch.no_grad()
    def compute_raw_target(self, batch):
        frames = frame_signal(batch.wav.float(), batch.num_frames, self.hop, self.cfg.win_length)
        return torch.log(frames.pow(2).mean(-1, keepdim=True) + 1e-8)
'''

ALL_WORKERS = ["lps", "mfcc", "prosody", "lim", "gim", "fbank", "waveform", "log_energy"]


def _train(run_dir: Path, data: Path, extra: List[str]) -> str:
    exe = shutil.which("fairseq-hydra-train")
    assert exe, "fairseq-hydra-train is not on PATH"
    cmd = [
        exe,
        "--config-dir", str(REPO / "config" / "pretrain"), "--config-name", "pase_tiny",
        f"common.user_dir={REPO / 'fairseq_ext'}", f"task.data={data}",
        "common.cpu=true", "common.fp16=false", "dataset.num_workers=0", "dataset.required_batch_size_multiple=1",
        "common.log_interval=1", "dataset.batch_size=4", "checkpoint.save_dir=checkpoints",
        f"hydra.run.dir={run_dir}", *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _records(log: str, tag: str) -> List[Dict[str, str]]:
    out = []
    for line in log.splitlines():
        if f"[{tag}][INFO] - {{" in line:
            out.append(json.loads(line.split(" - ", 1)[1]))
    return out


@pytest.fixture(scope="module")
def trained(demo_manifest, tmp_path_factory):
    """Train pase_tiny with every worker on a copy of the demo corpus plus a short utterance and a
    silent one; then resume it. Returns (tmp dir, first log, resume log)."""
    tmp = tmp_path_factory.mktemp("pase_train")
    wav_dir = tmp / "wav"
    src_root = Path(open(demo_manifest / "train.tsv").readline().strip())
    lines = open(demo_manifest / "train.tsv").read().splitlines()[1:]
    for line in lines:
        rel = line.split("\t")[0]
        (wav_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src_root / rel, wav_dir / rel)
    rng = np.random.default_rng(0)
    sf.write(wav_dir / "short.wav", (0.1 * rng.standard_normal(3000)).astype(np.float32), 16000)
    sf.write(wav_dir / "silence.wav", np.zeros(9000, dtype=np.float32), 16000)
    data = tmp / "manifest"
    data.mkdir()
    entries = lines + ["short.wav\t3000", "silence.wav\t9000"]
    (data / "train.tsv").write_text(f"{wav_dir}\n" + "\n".join(entries) + "\n")
    (data / "valid.tsv").write_text(f"{wav_dir}\n" + "\n".join(lines[:4]) + "\n")
    worker_file = tmp / "log_energy_worker.py"
    worker_file.write_text(textwrap.dedent(WORKER_FILE))

    workers = [
        "+model.workers.fbank={hidden_dim:32}",
        "+model.workers.waveform={channels:[16,8,8],hidden_dim:32}",
        "+model.workers.log_energy={hidden_dim:32}",
        f"model.worker_files=[{worker_file}]",
    ]
    # target statistics computed once by the script, for the same workers
    stats = tmp / "stats.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pase_stats.py"), str(data), str(stats), "--config",
         str(REPO / "config/pretrain/pase_tiny.yaml"), *sum((["--set", w] for w in workers), [])],
        check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    common = [*workers, f"model.target_stats={stats}"]
    run_dir = tmp / "run"
    log1 = _train(run_dir, data, [*common, "optimization.max_update=24"])
    log2 = _train(run_dir, data, [*common, "optimization.max_update=27"])
    return tmp, log1, log2


def test_every_worker_trains_and_total_loss_falls(trained):
    _, log, _ = trained
    recs = _records(log, "train_inner")
    assert len(recs) == 24
    for rec in recs:
        for name in ALL_WORKERS:
            assert np.isfinite(float(rec[f"loss_{name}"])), (name, rec)
        assert "acc_lim" in rec and "acc_gim" in rec
    assert float(recs[-1]["audio_s_per_s"]) > 0
    loss = np.array([float(r["loss"]) for r in recs])
    # medians: batches holding the silent chunk have a much larger loss (its log energies sit far
    # below the corpus' statistics)
    assert np.median(loss[-8:]) < 0.9 * np.median(loss[:8]), loss
    assert "target normalisation statistics loaded" in log
    assert "lr_encoder" in recs[0] and "lr_workers" in recs[0]
    valid = _records(log, "valid")
    assert valid and all(np.isfinite(float(v["valid_loss"])) for v in valid)


def test_resume_from_checkpoint_last(trained):
    tmp, _, log = trained
    assert "Loaded checkpoint" in log and "checkpoint_last.pt" in log
    recs = _records(log, "train_inner")
    assert [int(r["num_updates"]) for r in recs] == [25, 26, 27]
    assert (tmp / "run" / "checkpoints" / "checkpoint_last.pt").is_file()


def test_frozen_feature_extractor_on_trained_checkpoint(trained):
    from fairseq_ext.pase_features import build_pase_feature_extractor

    tmp, _, _ = trained
    extractor = build_pase_feature_extractor(str(tmp / "run" / "checkpoints" / "checkpoint_last.pt"))
    assert extractor.emb_dim == 32 and extractor.hop == 160
    assert not any(p.requires_grad for p in extractor.parameters())
    wav = 0.1 * torch.randn(2, 8000)
    feats, lengths = extractor(wav, torch.tensor([8000, 5000]))
    assert feats.shape == (2, 50, 32) and lengths.tolist() == [50, 31]
    extractor.train()  # stays frozen in eval mode inside a training parent
    assert not extractor.encoder.training
    alone, _ = extractor(wav[1:, :5000])
    assert torch.allclose(feats[1, :31], alone[0], atol=1e-4)
    assert torch.isfinite(feats).all()
    # the full model (workers included) also loads through the package's loader
    import fairseq_ext

    model, cfg, _ = fairseq_ext.load_model(str(tmp / "run" / "checkpoints" / "checkpoint_last.pt"))
    assert "log_energy" in model.workers
    with torch.no_grad():
        ref, _ = model.extract_features(wav[1:, :5000])
    assert torch.allclose(ref, alone, atol=1e-5)


def test_not_a_pase_checkpoint(tmp_path):
    from fairseq_ext.pase_features import build_pase_feature_extractor
    from fairseq_ext.base.errors import UserError

    path = tmp_path / "other.pt"
    torch.save({"cfg": {"model": {"_name": "hubert"}}, "model": {}}, path)
    with pytest.raises(UserError, match="not a PASE checkpoint"):
        build_pase_feature_extractor(str(path))
