"""fairseq_ext.load_model on torch >= 2.6: fairseq-hydra-train checkpoints whose user_dir is gone,
plain fairseq HuBERT checkpoints, numpy values in extra_state, clear errors."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

from fairseq_ext.checkpoint import CheckpointError, load_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "hubert.pt",
                                       user_dir="/nonexistent/old/checkout/my_plugin")


def _features(model, n=16000):
    wav = torch.from_numpy(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    with torch.no_grad():
        return model.extract_features(wav[None], None, mask=False, output_layer=1)[0]


def test_hydra_train_checkpoint_with_deleted_user_dir(demo_manifest, tmp_path):
    """A real fairseq-hydra-train run (2 updates) with a user_dir that is deleted afterwards."""
    from benchmarks.reference import fairseq_examples_dir

    exe = shutil.which("fairseq-hydra-train")
    assert exe, "fairseq-hydra-train is not on PATH"
    data = tmp_path / "data"
    data.mkdir()
    lines = (demo_manifest / "train.tsv").read_text().splitlines()
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        (data / f"{split}.km").write_text("".join(
            " ".join(map(str, rng.integers(0, 5, int(line.split("\t")[1]) // 320))) + "\n"
            for line in lines[1:]))
    (data / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(5)))
    plugin = tmp_path / "old_checkout" / "ckpt_test_plugin"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    cmd = [
        exe, "--config-dir", str(fairseq_examples_dir() / "config" / "pretrain"),
        "--config-name", "hubert_base_librispeech",
        f"task.data={data}", f"task.label_dir={data}", "task.labels=[km]", "model.label_rate=50",
        f"common.user_dir={plugin}", "common.cpu=true", "common.fp16=false",
        "common.tensorboard_logdir=null", "common.log_interval=1",
        "dataset.num_workers=0", "dataset.required_batch_size_multiple=1",
        "dataset.max_tokens=200000", "task.min_sample_size=1000", "optimization.max_update=2",
        "distributed_training.distributed_world_size=1", "distributed_training.nprocs_per_node=1",
        "+model.encoder_layers=1", "+model.encoder_embed_dim=32", "+model.encoder_ffn_embed_dim=64",
        "+model.encoder_attention_heads=2", "model.final_dim=16", "+model.conv_pos=8",
        "+model.conv_pos_groups=2",
        "model.conv_feature_layers='[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2'",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ckpt = tmp_path / "ckpt" / "checkpoint_last.pt"
    shutil.rmtree(plugin.parent)

    state = torch.load(ckpt, map_location="cpu")  # Dictionary is allow-listed by fairseq_ext
    assert state["cfg"]["common"]["user_dir"] == str(plugin)
    model, cfg, task = load_model(str(ckpt))
    assert type(model).__name__ == "HubertModel" and not model.training
    assert cfg.common.user_dir is None
    assert len(task.dictionaries[0]) == 5 + 4  # dict.km.txt + fairseq's special symbols
    assert _features(model).shape == (1, 49, 32)


def test_plain_fairseq_checkpoint_loads_in_fairseq_and_ours(tiny_ckpt):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_ckpt)])
    ours, ours_cfg, _ = load_model(str(tiny_ckpt))
    assert type(models[0]) is type(ours)
    assert cfg.task._name == "hubert_pretraining" and cfg.model._name == "hubert"
    assert [len(d) for d in task.dictionaries] == [14]
    assert ours_cfg.common.user_dir is None
    models[0].eval()
    torch.testing.assert_close(_features(models[0]), _features(ours))


def test_checkpoint_needs_the_allow_list(tiny_ckpt):
    """Without our allow-list, torch's safe loading refuses the pickled Dictionary (the bug we fix)."""
    from fairseq_ext.checkpoint import register_safe_globals

    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError, match="fairseq.data.dictionary.Dictionary"):
            torch.load(tiny_ckpt, map_location="cpu")
        register_safe_globals()
        assert torch.load(tiny_ckpt, map_location="cpu")["task_state"]["dictionaries"][0].symbols[4] == "0"
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_numpy_values_in_extra_state(tiny_ckpt, tmp_path):
    state = torch.load(tiny_ckpt, map_location="cpu")
    state["extra_state"]["best"] = np.float64(3.5)
    state["extra_state"]["val_loss"] = np.float32(2.0)
    state["extra_state"]["history"] = np.arange(3)
    torch.save(state, tmp_path / "np.pt")
    _, _, _ = load_model(str(tmp_path / "np.pt"))


def test_unsafe_global_is_a_clear_error_unless_trusted(tiny_ckpt, tmp_path):
    state = torch.load(tiny_ckpt, map_location="cpu")
    state["extra_state"]["where"] = pathlib.PurePosixPath("/some/where")
    torch.save(state, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="PurePosixPath.*trusted=True"):
        load_model(str(tmp_path / "unsafe.pt"))
    model, _, _ = load_model(str(tmp_path / "unsafe.pt"), trusted=True)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert model is not None


def test_bad_files(tmp_path, tiny_ckpt):
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.pt"))
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_model(str(tmp_path / "text.pt"))
    data = tiny_ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(str(tmp_path / "trunc.pt"))


def test_repo_is_tested():
    import fairseq_ext

    assert Path(fairseq_ext.__file__).resolve().parent == REPO / "fairseq_ext"
