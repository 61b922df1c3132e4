"""fairseq itself reads our outputs: HubertDataset on our manifest + labels, and a real pretraining run."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from simple_kmeans import pipeline
from fairseq_ext.base.manifest import read_manifest
from fairseq_ext.base.shards import read_lengths

REPO = Path(__file__).resolve().parents[1]
K = 20


@pytest.fixture(scope="module")
def labels(demo_corpus, tmp_path_factory):
    """Pipeline outputs (MFCC labels, K=20, 2 shards) for the shared demo corpus."""
    out = tmp_path_factory.mktemp("compat")
    pipeline.main(str(demo_corpus / "wav"), str(out), nshard=2, jobs=1, n_clusters=K, valid_percent=0.25,
                  phones=str(demo_corpus / "phones.tsv"), quiet=True)
    return out


def test_hubert_dataset_reads_our_files(labels, caplog):
    from fairseq.data import Dictionary
    from fairseq.data.audio.hubert_dataset import HubertDataset
    from fairseq.tasks.hubert_pretraining import LabelEncoder

    dictionary = Dictionary.load(str(labels / "labels" / "dict.km.txt"))
    assert len(dictionary) == dictionary.nspecial + K
    assert [dictionary.index(str(i)) for i in range(K)] == list(range(dictionary.nspecial, dictionary.nspecial + K))
    manifest = read_manifest(labels / "manifest" / "train.tsv")
    with caplog.at_level(logging.WARNING):
        ds = HubertDataset(str(labels / "manifest" / "train.tsv"), sample_rate=16000,
                           label_paths=[str(labels / "labels" / "train.km")], label_rates=100.0,
                           pad_list=[dictionary.pad()], eos_list=[dictionary.eos()],
                           label_processors=[LabelEncoder(dictionary)], shuffle=False)
    assert "differ too much" not in caplog.text  # fairseq's label/audio duration check is silent
    assert len(ds) == len(manifest)
    frames = np.concatenate([read_lengths(labels / "feat" / f"train_{r}_2.len") for r in range(2)])
    km_lines = (labels / "labels" / "train.km").read_text().splitlines()
    for i, entry in enumerate(manifest.entries):
        item = ds[i]
        assert item["source"].shape == (entry.n_samples,)
        assert len(item["label_list"][0]) == frames[i]
        # fairseq maps cluster c to dictionary index nspecial + c
        expected = [int(t) + dictionary.nspecial for t in km_lines[i].split()]
        assert item["label_list"][0].tolist() == expected
    batch = ds.collater([ds[i] for i in range(4)])
    assert batch["net_input"]["source"].shape[0] == 4 and len(batch["target_list"]) == 1


def test_fairseq_hydra_train_hubert_on_our_labels(labels, tmp_path):
    import fairseq

    cfg_dir = Path(fairseq.__file__).parent / "examples" / "hubert" / "config" / "pretrain"
    overrides = [
        f"task.data={labels / 'manifest'}", f"task.label_dir={labels / 'labels'}", 'task.labels=["km"]',
        "model.label_rate=100", f"common.user_dir={REPO / 'fairseq_ext'}", "common.cpu=true",
        "common.fp16=false", "common.log_interval=1", "common.tensorboard_logdir=null",
        "dataset.num_workers=0", "dataset.required_batch_size_multiple=1", "dataset.max_tokens=100000",
        "dataset.validate_interval=1", "task.min_sample_size=1000", "task.max_sample_size=24000",
        "optimization.max_update=6", "lr_scheduler.warmup_updates=2",
        "distributed_training.distributed_world_size=1", "distributed_training.nprocs_per_node=1",
        "++model.encoder_layers=2", "++model.encoder_embed_dim=64", "++model.encoder_ffn_embed_dim=128",
        "++model.encoder_attention_heads=2", "++model.conv_pos=16", "++model.conv_pos_groups=4",
        "model.final_dim=32", "model.encoder_layerdrop=0",
        "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'",
        "checkpoint.no_save=true", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(["fairseq-hydra-train", "--config-dir", str(cfg_dir), "--config-name",
                           "hubert_base_librispeech", *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    steps = [json.loads(m) for m in re.findall(r"\[train_inner\]\[INFO\] - (\{.*\})", log)]
    assert len(steps) == 6, log[-3000:]
    assert all(np.isfinite(float(s["loss"])) for s in steps)
    assert "differ too much" not in log
    valid = re.findall(r"\[valid\]\[INFO\] - (\{.*\})", log)
    assert valid and np.isfinite(float(json.loads(valid[-1])["valid_loss"]))
