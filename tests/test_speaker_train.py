"""Real ``fairseq-hydra-train`` runs of speaker_classification on each input kind, then inference CSVs.

The three trainings (raw audio through the trainable front-end, homework features, frozen tiny-HuBERT
features) are started together in a module fixture, so they overlap on a multi-core machine.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.test_speaker_data import make_homework_layout, write_labeled_manifest

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "fairseq_ext"
CLI_COMMON = ["common.cpu=true", "common.fp16=false", "dataset.num_workers=0",
              "dataset.required_batch_size_multiple=1", f"common.user_dir={USER_DIR}"]


def _launch(cwd: Path, config_dir: str, config_name: str, overrides: List[str]) -> subprocess.Popen:
    exe = shutil.which("fairseq-hydra-train")
    cmd = [exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    cmd += ["--config-dir", str(REPO / "config" / config_dir), "--config-name", config_name,
            "hydra.run.dir=.", *CLI_COMMON, *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "train.log", "w")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(demo_corpus, tmp_path_factory) -> Dict:
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    base = tmp_path_factory.mktemp("speaker_runs")
    manifest_dir = base / "manifest"
    write_labeled_manifest(demo_corpus, manifest_dir)
    hw = make_homework_layout(base / "homework")
    hubert = make_tiny_hubert_checkpoint(base / "hubert.pt")
    dirs = {"audio": base / "audio", "homework": base / "homework_run", "ssl": base / "ssl"}
    procs = {
        "audio": _launch(dirs["audio"], "kws", "tiny", [
            f"task.data={demo_corpus / 'wav'}", "model.trainable_mel=true", "model.trainable_stft=true"]),
        "homework": _launch(dirs["homework"], "speaker", "tiny", [
            f"task.data={hw}", "task.input_type=homework", "model.input_norm=none"]),
        "ssl": _launch(dirs["ssl"], "speaker", "tiny", [
            f"task.data={manifest_dir}", "task.input_type=ssl", f"model.ssl_checkpoint={hubert}",
            "model.ssl_layer=-1"]),
    }
    out: Dict = {}
    try:
        for name, proc in procs.items():
            out[f"{name}_rc"] = proc.wait(timeout=300)
            out[name] = dirs[name]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    out.update(base=base, manifest=manifest_dir, homework_data=hw, hubert=hubert)
    return out


def _check_run(runs, name: str, valid_must_fall: bool = True) -> Dict[str, List[float]]:
    run_dir = runs[name]
    text = (run_dir / "train.log").read_text()
    assert runs[f"{name}_rc"] == 0, text[-4000:]
    train, valid = [], []
    for line in text.splitlines():
        if "[train_inner]" in line:
            train.append(float(json.loads(line.split(" - ", 1)[1])["loss"]))
        elif "[valid]" in line:
            valid.append(float(json.loads(line.split(" - ", 1)[1])["valid_loss"]))
    assert len(train) >= 8 and valid, text[-4000:]
    assert all(map(lambda v: v == v and abs(v) != float("inf"), train + valid))
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3, f"training loss did not fall: {train}"
    if valid_must_fall:
        assert valid[-1] < valid[0], f"validation loss did not fall: {valid}"
    assert (run_dir / "checkpoints" / "checkpoint_last.pt").is_file()
    return {"train": train, "valid": valid}


def _infer(ckpt: Path, inp: Path, out: Path, **kw) -> List[List[str]]:
    from fairseq_ext.speaker_inference import write_predictions

    write_predictions(str(ckpt), str(inp), str(out), batch_size=3, **kw)
    with open(out) as f:
        return list(csv.reader(f))


def test_raw_audio_with_trainable_frontend(runs, demo_corpus, tmp_path):
    from fairseq_ext import load_model
    from fairseq_ext.modules.frontend import mel_filterbank
    from tests.conftest import write_manifest

    _check_run(runs, "audio")
    ckpt = runs["audio"] / "checkpoints" / "checkpoint_last.pt"
    model, cfg, task = load_model(str(ckpt))
    mel = model.frontend.mel_basis.detach()
    assert mel.min() >= 0.0 and mel.max() <= 1.0  # clamped after every update
    assert (mel - torch.from_numpy(mel_filterbank(16000, 480, 40))).abs().max() > 1e-4  # and trained
    assert task.labels == ["spk00", "spk01", "spk02"]  # from the checkpoint's task state
    tsv = write_manifest(demo_corpus / "wav", tmp_path / "test.tsv")
    rows = _infer(ckpt, tsv, tmp_path / "pred.csv")
    assert rows[0] == ["Id", "Category"] and len(rows) == 13
    assert rows[1][0] == "spk00/spk00_000.wav"
    assert {r[1] for r in rows[1:]} <= set(task.labels)


def test_homework_features_and_test_csv(runs, tmp_path):
    _check_run(runs, "homework")
    ckpt = runs["homework"] / "checkpoints" / "checkpoint_best.pt"
    rows = _infer(ckpt, runs["homework_data"] / "testdata.json", tmp_path / "pred.csv")
    meta = json.loads((runs["homework_data"] / "testdata.json").read_text())
    assert rows[0] == ["Id", "Category"]
    assert [r[0] for r in rows[1:]] == [u["feature_path"] for u in meta["utterances"]]
    assert {r[1] for r in rows[1:]} <= {"id10001", "id10002", "id10003"}


def test_frozen_ssl_features(runs, tmp_path):
    from fairseq_ext import load_model

    _check_run(runs, "ssl", valid_must_fall=False)  # random tiny upstream: 3 valid utterances are noise
    ckpt = runs["ssl"] / "checkpoints" / "checkpoint_last.pt"
    model, _, _ = load_model(str(ckpt))
    upstream = model.frontend
    original = torch.load(runs["hubert"], map_location="cpu", weights_only=True)["model"]
    for k, v in upstream.model.state_dict().items():
        assert torch.equal(v, original[k]), f"frozen upstream weight {k} changed"
    assert upstream.layer_weights.detach().abs().max() > 0  # the layer weights did train
    assert not any(p.requires_grad for p in upstream.model.parameters())
    # inference with the SSL checkpoint moved elsewhere
    moved = tmp_path / "moved_hubert.pt"
    shutil.copy(runs["hubert"], moved)
    rows = _infer(ckpt, runs["manifest"] / "train.tsv", tmp_path / "pred.csv", ssl_checkpoint=str(moved))
    assert len(rows) == 13
