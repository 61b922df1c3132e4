"""HuBERT iteration 2 with the disentangled model, end to end on the demo corpus.

Iteration 1: MFCC -> k-means (faiss) -> 100 Hz labels with the label-pipeline scripts, speakers and
pitch, a few updates of config/pretrain/dhubert_tiny (+data=iter1) through fairseq-hydra-train.
Iteration 2: layer-1 features of that checkpoint (simple_kmeans/dump_hubert_feature.py) -> k-means ->
50 Hz labels -> a few updates with +data=iter2 (label_rate 50), pitch still at 100 Hz.
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
from typing import Dict, List

import pytest

from conftest import REPO, write_manifest

K = 8
LOG_RECORD = re.compile(r"\[(train_inner|valid)\]\[INFO\] - (\{.*\})\s*$")


def kmeans_labels(man: Path, feat: Path, lab: Path) -> None:
    """k-means (faiss) on the train features, labels for train and valid, merged with dict.km.txt."""
    from simple_kmeans import dump_km_label, learn_kmeans, merge_labels

    learn_kmeans.main(str(feat), "train", 1, str(feat / "km.mdl"), K, backend="faiss")
    for split in ("train", "valid"):
        dump_km_label.main(str(feat), split, str(feat / "km.mdl"), 1, 0, str(lab))
        merge_labels.main(str(lab), split, 1, tsv_dir=str(man), feat_dir=str(feat), n_clusters=K)


def hydra_train(cwd: Path, data: str, overrides: List[str]) -> List[Dict]:
    exe = shutil.which("fairseq-hydra-train")
    cmd = ([exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]) + [
        "--config-dir", str(REPO / "config" / "pretrain"), "--config-name", "dhubert_tiny", f"+data={data}",
        f"common.user_dir={REPO / 'fairseq_ext'}", "common.cpu=true", "common.fp16=false",
        "dataset.num_workers=0", "dataset.required_batch_size_multiple=1", "optimization.max_update=4",
        "model.adv_warmup_updates=2", *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return [{"kind": m.group(1), **json.loads(m.group(2))}
            for m in map(LOG_RECORD.search, out.splitlines()) if m]


@pytest.fixture(scope="module")
def iteration1(demo_corpus, tmp_path_factory) -> Dict[str, Path]:
    """Manifests, 100 Hz MFCC labels, speakers, pitch and a 4-update dhubert_tiny checkpoint."""
    from simple_kmeans import dump_mfcc_feature, dump_pitch_feature, pitch_stats, speaker_labels

    root = tmp_path_factory.mktemp("it1")
    man, feat, lab, pitch = root / "manifest", root / "feat", root / "labels", root / "pitch"
    wavs = sorted((demo_corpus / "wav").rglob("*.wav"))
    write_manifest(demo_corpus / "wav", man / "train.tsv", wavs)
    write_manifest(demo_corpus / "wav", man / "valid.tsv", wavs[::4])  # one utterance per speaker
    for split in ("train", "valid"):
        dump_mfcc_feature.main(str(man), split, 1, 0, str(feat))
        speaker_labels.main(str(man), split, str(lab), table=str(demo_corpus / "speakers.tsv"),
                            dict=str(lab) if split == "valid" else None)
        dump_pitch_feature.main(str(man), split, 1, 0, str(pitch), frame_rate=100)
    pitch_stats.main(str(pitch), "train", 1, spk_file=str(lab / "train.spk"))
    kmeans_labels(man, feat, lab)
    logs = hydra_train(root, "iter1", [f"task.data={man}", f"task.label_dir={lab}", f"task.pitch_dir={pitch}",
                                       f"hydra.run.dir={root / 'run'}"])
    assert [int(r["num_updates"]) for r in logs if r["kind"] == "train_inner"] == [1, 2, 3, 4]
    ckpt = root / "run" / "checkpoints" / "checkpoint_best.pt"
    assert ckpt.is_file()
    return {"root": root, "manifest": man, "labels": lab, "pitch": pitch, "ckpt": ckpt}


def test_iteration2_trains_on_50hz_labels_of_the_dhubert_checkpoint(iteration1, tmp_path):
    from simple_kmeans import dump_hubert_feature
    from fairseq_ext.base.frames import frames_at_rate as num_frames
    from fairseq_ext.base.manifest import read_manifest

    man, feat, lab2 = iteration1["manifest"], tmp_path / "feat", tmp_path / "labels"
    for split in ("train", "valid"):
        dump_hubert_feature.main(str(man), split, str(iteration1["ckpt"]), 1, 1, 0, str(feat), device="cpu")
    kmeans_labels(man, feat, lab2)
    # one label per 20 ms CNN frame of every utterance
    manifest = read_manifest(man / "train.tsv")
    lines = (lab2 / "train.km").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [num_frames(e.n_samples, 50) for e in manifest.entries]
    assert len({x for line in lines for x in line.split()}) > 1

    logs = hydra_train(tmp_path, "iter2", [
        f"task.data={man}", f"task.label_dir={lab2}", f"task.spk_dir={iteration1['labels']}",
        f"task.pitch_dir={iteration1['pitch']}", f"hydra.run.dir={tmp_path / 'run'}"])
    inner = [r for r in logs if r["kind"] == "train_inner"]
    assert [int(r["num_updates"]) for r in inner] == [1, 2, 3, 4]
    for r in inner:
        for key in ("loss", "loss_m_0", "loss_spk", "loss_pitch"):
            assert math.isfinite(float(r[key])), (key, r)
    valid = [r for r in logs if r["kind"] == "valid"]
    assert valid and math.isfinite(float(valid[-1]["valid_loss"]))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").is_file()

    import fairseq_ext

    model, cfg, task = fairseq_ext.load_model(str(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt"))
    assert cfg.model.label_rate == 50 and task.cfg.label_rate == 50
    assert task.speakers == ["spk00", "spk01", "spk02"]


def test_iteration2_labels_with_the_iteration1_rate_are_refused(iteration1, tmp_path):
    """Training the 50 Hz labels with label_rate=100 (+data=iter1) stops with the real rate named."""
    from simple_kmeans import dump_hubert_feature
    from fairseq_ext.base.errors import UserError
    from fairseq_ext.tasks.dhubert_pretraining import DHubertPretrainingConfig, DHubertPretrainingTask

    man, feat, lab2 = iteration1["manifest"], tmp_path / "feat", tmp_path / "labels"
    for split in ("train", "valid"):
        dump_hubert_feature.main(str(man), split, str(iteration1["ckpt"]), 2, 1, 0, str(feat), device="cpu")
    kmeans_labels(man, feat, lab2)
    cfg = DHubertPretrainingConfig(data=str(man), label_dir=str(lab2), labels=["km"], label_rate=100.0,
                                   spk_dir=str(iteration1["labels"]), pitch_dir=str(iteration1["pitch"]))
    with pytest.raises(UserError, match=r"look like 50 Hz, not the configured 100 Hz"):
        DHubertPretrainingTask(cfg).load_dataset("train")
    cfg.label_rate = 50.0
    DHubertPretrainingTask(cfg).load_dataset("train")  # the right rate loads
