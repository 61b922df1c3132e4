"""speaker_classification task: input layouts, deterministic splits, crops, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from fairseq_ext.tasks.speaker_classification import SpeakerClassificationConfig, SpeakerClassificationTask
from fairseq_ext.base.errors import UserError


def make_homework_layout(root: Path, n_speakers: int = 3, utts: int = 6, n_mels: int = 40, n_test: int = 4,
                         seed: int = 0) -> Path:
    """Write a small ML2022-HW4-style folder: per-speaker mean + noise log-Mel tensors, json files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"id{10001 + i}" for i in range(n_speakers)]
    means = rng.normal(0, 1.5, size=(n_speakers, n_mels))

    def utt(s: int, k: str) -> Dict:
        T = int(rng.integers(40, 160))
        feats = torch.from_numpy(means[s] + rng.normal(0, 1, size=(T, n_mels))).float()
        path = f"uttr-{k}.pt"
        torch.save(feats, root / path)
        return {"feature_path": path, "mel_len": T}

    speakers = {n: [utt(s, f"{s}_{i}") for i in range(utts)] for s, n in enumerate(names)}
    test = [utt(i % n_speakers, f"test{i}") for i in range(n_test)]
    (root / "metadata.json").write_text(json.dumps({"n_mels": n_mels, "speakers": speakers}))
    (root / "mapping.json").write_text(json.dumps({"speaker2id": {n: i for i, n in enumerate(names)},
                                                   "id2speaker": {str(i): n for i, n in enumerate(names)}}))
    (root / "testdata.json").write_text(json.dumps({"n_mels": n_mels, "utterances": test}))
    return root


def write_labeled_manifest(corpus: Path, out_dir: Path, split: str = "train") -> Path:
    """``{split}.tsv`` + ``{split}.lbl`` (speaker of each utterance) for the demo corpus."""
    from tests.conftest import write_manifest

    tsv = write_manifest(corpus / "wav", out_dir / f"{split}.tsv")
    spk = dict(line.split("\t") for line in (corpus / "speakers.tsv").read_text().splitlines())
    rel = [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]]
    (out_dir / f"{split}.lbl").write_text("".join(spk[Path(r).stem] + "\n" for r in rel))
    return tsv


def _task(data: Path, **kw) -> SpeakerClassificationTask:
    return SpeakerClassificationTask.setup_task(SpeakerClassificationConfig(data=str(data), **kw))


def _uids(task, split) -> List[str]:
    task.load_dataset(split)
    return [u.uid for u in task.datasets[split].items]


# --------------------------------------------------------------------------- layouts and splits


def test_manifest_with_labels_and_seeded_stratified_holdout(demo_corpus, tmp_path):
    write_labeled_manifest(demo_corpus, tmp_path)
    task = _task(tmp_path, valid_percent=0.25)
    assert task.labels == ["spk00", "spk01", "spk02"] and task.layout == "manifest"
    train, valid = _uids(task, "train"), _uids(task, "valid")
    assert len(valid) == 3 and len(train) == 9 and not set(train) & set(valid)
    assert sorted(Path(u).parent.name for u in valid) == ["spk00", "spk01", "spk02"]  # one per class
    assert _uids(_task(tmp_path, valid_percent=0.25), "valid") == valid  # deterministic
    assert _uids(_task(tmp_path, valid_percent=0.25, split_seed=5), "valid") != valid
    # an explicit valid split on disk replaces the hold-out
    write_labeled_manifest(demo_corpus, tmp_path, "valid")
    assert len(_uids(_task(tmp_path, valid_percent=0.25), "train")) == 12


def test_audio_crops_are_reproducible_and_batches_padded(demo_corpus, tmp_path):
    write_labeled_manifest(demo_corpus, tmp_path)
    task = _task(tmp_path, segment_len=20, valid_percent=0.25)
    task.load_dataset("train")
    ds = task.datasets["train"]
    assert ds.crop == 20 * 160 and all(len(ds[i]["source"]) == 3200 for i in range(3))
    first = ds[0]["source"].clone()
    assert torch.equal(ds[0]["source"], first)  # same epoch, same crop
    ds.set_epoch(2)
    assert not torch.equal(ds[0]["source"], first)  # new epoch, new crop
    task.load_dataset("valid")
    v = task.datasets["valid"]
    batch = v.collater([v[i] for i in range(len(v))])
    lengths = [it.length for it in v.items]
    assert batch["net_input"]["source"].shape == (3, max(lengths))  # whole utterances
    assert batch["net_input"]["padding_mask"].sum(1).tolist() == [max(lengths) - n for n in lengths]
    assert batch["target"].tolist() == [it.label for it in v.items]


def test_folder_tree_with_speech_commands_lists(demo_corpus, tmp_path):
    import shutil

    root = tmp_path / "kws"
    shutil.copytree(demo_corpus / "wav", root)
    (root / "_background_noise_").mkdir()  # skipped, as in Speech Commands
    (root / "validation_list.txt").write_text("spk00/spk00_001.wav\nspk01/spk01_001.wav\n")
    (root / "testing_list.txt").write_text("spk02/spk02_003.wav\n")
    (root / "keywords.tsv").write_text("word\tphones\n")  # a stray table is not a manifest
    task = _task(root)
    assert task.layout == "folders" and task.labels == ["spk00", "spk01", "spk02"]
    assert _uids(task, "valid") == ["spk00/spk00_001.wav", "spk01/spk01_001.wav"]
    assert _uids(task, "test") == ["spk02/spk02_003.wav"]
    assert len(_uids(task, "train")) == 9


def test_homework_layout_splits_crops_and_test_set(tmp_path):
    root = make_homework_layout(tmp_path / "hw")
    task = _task(root, input_type="homework", segment_len=32, valid_percent=0.2)
    assert task.labels == ["id10001", "id10002", "id10003"] and task.feature_dim == 40
    task.load_dataset("train")
    task.load_dataset("valid")
    tr, va = task.datasets["train"], task.datasets["valid"]
    assert len(tr) + len(va) == 18 and len(va) == 3
    assert tr[0]["source"].shape == (32, 40)
    assert va[0]["source"].shape == (va.items[0].length, 40)
    test, ids = task.inference_dataset(str(root / "testdata.json"))
    assert len(ids) == 4 and ids[0] == "uttr-test0.pt"
    batch = test.collater([test[i] for i in range(4)])
    assert batch["target"] is None and batch["net_input"]["source"].shape[2] == 40


# --------------------------------------------------------------------------- bad input


def _edit_metadata(root: Path, fn) -> None:
    meta = json.loads((root / "metadata.json").read_text())
    fn(meta)
    (root / "metadata.json").write_text(json.dumps(meta))


def test_missing_feature_path_names_the_utterance(tmp_path):
    root = make_homework_layout(tmp_path / "hw")
    _edit_metadata(root, lambda m: m["speakers"]["id10002"][3].pop("feature_path"))
    with pytest.raises(UserError, match=r"metadata.json: speaker 'id10002' utterance #3 has no 'feature_path'"):
        _task(root, input_type="homework").load_dataset("train")


def test_missing_feature_file_names_the_file(tmp_path):
    root = make_homework_layout(tmp_path / "hw")
    (root / "uttr-1_2.pt").unlink()
    with pytest.raises(UserError, match=r"uttr-1_2\.pt does not exist"):
        _task(root, input_type="homework").load_dataset("train")


def test_feature_dim_mismatch_names_the_file(tmp_path):
    root = make_homework_layout(tmp_path / "hw")
    torch.save(torch.randn(50, 30), root / "uttr-0_0.pt")
    task = _task(root, input_type="homework", valid_percent=0.0)
    task.load_dataset("train")
    ds = task.datasets["train"]
    i = next(k for k, u in enumerate(ds.items) if u.uid == "uttr-0_0.pt")
    with pytest.raises(UserError, match=r"uttr-0_0\.pt has feature dimension 30 but n_mels is 40"):
        ds[i]


def test_speaker_absent_from_mapping(tmp_path):
    root = make_homework_layout(tmp_path / "hw")
    _edit_metadata(root, lambda m: m["speakers"].__setitem__("id99999", m["speakers"]["id10001"][:2]))
    with pytest.raises(UserError, match=r"speaker 'id99999' is not in .*mapping\.json"):
        _task(root, input_type="homework").load_dataset("train")


def test_empty_class_is_an_error(tmp_path, demo_corpus):
    import shutil

    root = make_homework_layout(tmp_path / "hw")
    _edit_metadata(root, lambda m: m["speakers"].__setitem__("id10003", []))
    with pytest.raises(UserError, match=r"speaker 'id10003' has no utterances \(empty class\)"):
        _task(root, input_type="homework").load_dataset("train")
    tree = tmp_path / "tree"
    for spk in ("a", "b"):
        (tree / spk).mkdir(parents=True)
    shutil.copy(demo_corpus / "wav" / "spk00" / "spk00_000.wav", tree / "a" / "x.wav")
    with pytest.raises(UserError, match=r"class folder .*/b holds no audio files"):
        _task(tree).labels
    # a label of dict.lbl.txt without training utterances
    man = tmp_path / "man"
    write_labeled_manifest(demo_corpus, man)
    (man / "dict.lbl.txt").write_text("spk00 4\nspk01 4\nspk02 4\nspk09 0\n")
    with pytest.raises(UserError, match=r"\['spk09'\] have no training utterance"):
        _task(man, valid_percent=0.25).load_dataset("train")


def test_manifest_label_errors_name_file_and_line(demo_corpus, tmp_path):
    write_labeled_manifest(demo_corpus, tmp_path)
    (tmp_path / "dict.lbl.txt").write_text("spk00\nspk01\nspk02\n")
    lines = (tmp_path / "train.lbl").read_text().splitlines()
    lines[4] = "spk77"
    (tmp_path / "train.lbl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train\.lbl:5: label 'spk77' is not in the label inventory"):
        _task(tmp_path).load_dataset("train")
    (tmp_path / "train.lbl").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(UserError, match=r"train\.lbl has 10 labels but its manifest lists 12"):
        _task(tmp_path).load_dataset("train")
    (tmp_path / "train.lbl").unlink()
    (tmp_path / "dict.lbl.txt").unlink()
    with pytest.raises(UserError, match=r"train\.lbl does not exist"):
        _task(tmp_path).labels
    write_labeled_manifest(demo_corpus, tmp_path)
    with pytest.raises(UserError, match="task.valid_percent > 0"):
        _task(tmp_path, valid_percent=0.0).load_dataset("valid")
