"""Phone recognition downstream: a real ``fairseq-hydra-train`` run of ``phone_recognition`` on a frozen tiny
HuBERT (falling, finite loss; PER in the validation log), ``fairseq-ext-pr-eval`` on its checkpoint, the
frozen upstream, and the bad-input errors (phone missing from the dictionary, transcript too long for CTC).

The data come from the demo corpus: its frame-level phones (``uid<TAB>p1,p2,...`` at 100 Hz) with repeats
collapsed are the phone transcripts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.conftest import write_manifest

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "fairseq_ext"


def write_pr_data(corpus: Path, out: Path, held_out: int = 1) -> Path:
    """``{train,valid}.tsv`` (the last ``held_out`` utterances of each speaker are ``valid``), then
    ``{train,valid}.phn`` and ``dict.phn.txt`` from the corpus's frame-level phones (fairseq-ext-collapse-phones)."""
    from fairseq_ext.data import collapse_phones

    wav_root = corpus / "wav"
    splits: Dict[str, List[Path]] = {"train": [], "valid": []}
    for spk in sorted(p for p in wav_root.iterdir() if p.is_dir()):
        files = sorted(spk.glob("*.wav"))
        splits["train"] += files[:-held_out]
        splits["valid"] += files[-held_out:]
    for split, files in splits.items():
        write_manifest(wav_root, out / f"{split}.tsv", files)
    collapse_phones.main(str(corpus / "phones.tsv"), str(out))
    return out


@pytest.fixture(scope="module")
def pr_data(demo_corpus, tmp_path_factory) -> Path:
    return write_pr_data(demo_corpus, tmp_path_factory.mktemp("pr_data"))


@pytest.fixture(scope="module")
def hubert(tmp_path_factory) -> Path:
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    return make_tiny_hubert_checkpoint(tmp_path_factory.mktemp("pr_upstream") / "hubert.pt")


def read_log(run_dir: Path) -> Dict[str, List[Dict]]:
    """``train_inner`` and ``valid`` JSON records of a fairseq-hydra-train log."""
    out: Dict[str, List[Dict]] = {"train": [], "valid": []}
    for line in (run_dir / "train.log").read_text().splitlines():
        for tag, key in (("[train_inner]", "train"), ("[valid]", "valid")):
            if tag in line:
                out[key].append(json.loads(line.split(" - ", 1)[1]))
    return out


@pytest.fixture(scope="module")
def trained(pr_data, hubert, tmp_path_factory) -> Path:
    """12 updates of config/downstream/pr_tiny.yaml through the real fairseq-hydra-train."""
    run_dir = tmp_path_factory.mktemp("pr_run")
    exe = shutil.which("fairseq-hydra-train")
    cmd = [exe] if exe else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    cmd += ["--config-dir", str(REPO / "config" / "downstream"), "--config-name", "pr_tiny", "hydra.run.dir=.",
            f"task.data={pr_data}", f"model.upstream={hubert}", f"common.user_dir={USER_DIR}",
            "common.cpu=true", "dataset.num_workers=0", "optimization.max_update=12"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(run_dir / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300).returncode
    assert rc == 0, (run_dir / "train.log").read_text()[-4000:]
    return run_dir


def test_training_loss_is_finite_and_falls_and_per_is_logged(trained):
    log = read_log(trained)
    train = [float(r["loss"]) for r in log["train"]]
    assert len(train) == 12, train
    assert all(math.isfinite(v) for v in train)
    assert sum(train[-3:]) / 3 < 0.5 * sum(train[:3]) / 3, f"training loss did not fall: {train}"
    valid = log["valid"]
    assert valid and all(float(r["valid_per"]) >= 0 for r in valid), valid  # insertions can pass 100
    assert float(valid[-1]["valid_loss"]) < float(valid[0]["valid_loss"]), valid
    assert (trained / "checkpoints" / "checkpoint_best.pt").is_file()


def test_only_the_head_trains(trained, hubert):
    state = torch.load(trained / "checkpoints" / "checkpoint_last.pt", weights_only=False)["model"]
    original = torch.load(hubert, weights_only=False)["model"]
    frozen = {k[len("upstream_model."):]: v for k, v in state.items() if k.startswith("upstream_model.")}
    assert frozen.keys() == original.keys()
    assert all(torch.equal(frozen[k], original[k]) for k in original)
    weights = state["head.layer_sum.weights"]  # 3 hidden states of the 2-layer upstream, start at 0
    assert weights.shape == (3,) and weights.abs().max() > 0


def test_pr_eval_prints_per_and_writes_hypotheses(trained, pr_data, tmp_path, capsys):
    from fairseq_ext import pr_eval
    from fairseq_ext.data.phone_transcripts import read_phone_transcripts
    from fairseq_ext.phone_error import phone_errors

    hyps_path = tmp_path / "hyps.txt"
    pr_eval.cli([str(trained / "checkpoints" / "checkpoint_best.pt"), str(pr_data), "--split", "valid",
                 "--out", str(hyps_path), "--batch-size", "2"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    lines = hyps_path.read_text().splitlines()
    uids = [Path(line.split("\t")[0]).stem for line in (pr_data / "valid.tsv").read_text().splitlines()[1:]]
    assert [line.split("\t")[0] for line in lines] == uids
    hyps = {line.split("\t")[0]: line.split("\t")[1].split() for line in lines}
    refs = read_phone_transcripts(pr_data / "valid.phn")
    expected = phone_errors([refs[u].phones for u in uids], [hyps[u] for u in uids])
    assert printed == (f"valid: PER {100 * expected.per:.2f}% ({expected.errors} errors / {expected.ref_phones} "
                       f"phones, 3 utterances)")
    # the same PER as the validation log of the same checkpoint (best = last validation here or earlier)
    best = min(float(r["valid_per"]) for r in read_log(trained)["valid"])
    assert abs(100 * expected.per - best) < 1e-2


def test_pr_eval_decodes_an_unlabeled_split(trained, pr_data, tmp_path):
    from fairseq_ext import pr_eval
    from fairseq_ext.base.errors import UserError

    data = tmp_path / "unlabeled"
    data.mkdir()
    shutil.copy(pr_data / "valid.tsv", data / "test.tsv")
    out = tmp_path / "hyps.txt"
    assert pr_eval.main(str(trained / "checkpoints" / "checkpoint_last.pt"), str(data), out=str(out)) is None
    assert len(out.read_text().splitlines()) == 3
    missing = tmp_path / "elsewhere" / "hubert.pt"
    with pytest.raises(UserError, match=f"checkpoint {missing} does not exist"):  # --upstream replaces the recorded path
        pr_eval.main(str(trained / "checkpoints" / "checkpoint_last.pt"), str(data), upstream=str(missing))


# --------------------------------------------------------------------------- in-process: model, criterion, errors


def build(pr_data: Path, hubert: Path, **head):
    """Task (valid split loaded), model and criterion, built as fairseq builds them."""
    from fairseq_ext.criteria.phone_ctc import PhoneCtcConfig, PhoneCtcCriterion
    from fairseq_ext.models.phone_recognizer import PhoneRecognizerConfig, PhoneRecognizerModel
    from fairseq_ext.tasks.phone_recognition import PhoneRecognitionConfig, PhoneRecognitionTask

    task = PhoneRecognitionTask.setup_task(PhoneRecognitionConfig(data=str(pr_data), upstream=str(hubert)))
    task.load_dataset("valid")
    torch.manual_seed(0)
    model = PhoneRecognizerModel.build_model(PhoneRecognizerConfig(upstream=str(hubert), lstm_hidden=8, dropout=0.0,
                                                                   **head), task)
    criterion = PhoneCtcCriterion(PhoneCtcConfig(sentence_avg=False), task)
    return task, model, criterion


def test_frozen_upstream_shapes_and_batching(pr_data, hubert):
    task, model, criterion = build(pr_data, hubert)
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    assert batch["net_input"]["padding_mask"].any()  # the three utterances differ in length
    model.train()
    assert not model.upstream_model.training
    assert all(not p.requires_grad for p in model.upstream_model.parameters())
    loss, sample_size, log = criterion(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and sample_size == log["ntokens"] == int(batch["target_lengths"].sum())
    assert "phone_errors" not in log  # PER only in eval mode
    assert model.head.layer_sum.weights.grad is not None
    model.eval()
    out = model(**batch["net_input"])
    B, T, V = out["log_probs"].shape
    assert (B, V) == (3, len(task.target_dictionary)) and out["lengths"].max() == T
    for b in range(B):  # batched = one utterance at a time
        alone = model(**dataset.collater([dataset[int(batch["id"][b])]])["net_input"])["log_probs"][0]
        n = int(out["lengths"][b])
        assert alone.shape[0] == n
        assert torch.allclose(alone, out["log_probs"][b, :n], atol=1e-5)
    _, _, log = criterion(model, batch)
    assert log["ref_phones"] == int(batch["target_lengths"].sum()) and 0 <= log["phone_errors"]


def test_one_hidden_state_head(pr_data, hubert):
    task, model, _ = build(pr_data, hubert, layer=2, lstm_layers=0)
    assert model.head.layer_sum.weights is None and model.head.lstm is None
    dataset = task.dataset("valid")
    out = model.eval()(**dataset.collater([dataset[0]])["net_input"])
    assert out["log_probs"].shape[-1] == len(task.target_dictionary) and out["padding_mask"] is None
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == ["head.proj.bias", "head.proj.weight"]


def test_per_sums_over_workers():
    from fairseq.logging import metrics

    from fairseq_ext.criteria.phone_ctc import PhoneCtcCriterion

    assert PhoneCtcCriterion.logging_outputs_can_be_summed()
    logs = [{"loss": 4.0, "ntokens": 10, "nsentences": 1, "sample_size": 10, "phone_errors": 3, "ref_phones": 10},
            {"loss": 2.0, "ntokens": 30, "nsentences": 2, "sample_size": 30, "phone_errors": 1, "ref_phones": 30}]
    with metrics.aggregate() as agg:
        PhoneCtcCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["per"] == 10.0  # 4 errors / 40 phones, not the mean of 30% and 3.3%


def test_phone_missing_from_dictionary_names_file_and_line(pr_data, hubert, tmp_path):
    from fairseq_ext.base.errors import UserError

    data = tmp_path / "data"
    shutil.copytree(pr_data, data)
    lines = (data / "valid.phn").read_text().splitlines()
    uid, phones = lines[1].split("\t")
    lines[1] = f"{uid}\t{phones} zz"
    (data / "valid.phn").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"valid\.phn:2: phone 'zz' of utterance {uid} is not in .*dict\.phn\.txt"):
        build(data, hubert)


def test_transcript_longer_than_ctc_frames_names_file_and_line(pr_data, hubert, tmp_path):
    from fairseq_ext.base.errors import UserError

    data = tmp_path / "data"
    shutil.copytree(pr_data, data)
    lines = (data / "valid.phn").read_text().splitlines()
    uid, phones = lines[2].split("\t")
    lines[2] = f"{uid}\t{' '.join(phones.split() * 20)}"  # far more phones than 50 Hz frames
    (data / "valid.phn").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"valid\.phn:3: utterance {uid} has \d+ phones.*CTC needs at least"):
        build(data, hubert)


def test_configs_are_found_and_compose():
    from omegaconf import OmegaConf

    import fairseq_ext

    for name, head_layers in (("pr_tiny", 1), ("pr", 0)):
        cfg = OmegaConf.load(fairseq_ext.config_dir("downstream") / f"{name}.yaml")
        assert (cfg.task._name, cfg.model._name, cfg.criterion._name) == \
            ("phone_recognition", "phone_recognizer", "phone_ctc")
        assert cfg.model.lstm_layers == head_layers and cfg.checkpoint.best_checkpoint_metric == "per"


def test_collapse_phones_writes_transcripts_and_dictionary(demo_corpus, pr_data, tmp_path):
    from fairseq_ext.base.errors import UserError
    from fairseq_ext.data import collapse_phones
    from fairseq_ext.data.phone_transcripts import load_phone_dictionary, read_phone_transcripts

    assert collapse_phones.collapse_repeats(["sil", "sil", "aa", "aa", "aa", "sil", "aa"]) == ["sil", "aa", "sil", "aa"]
    frames = dict(line.split("\t") for line in (demo_corpus / "phones.tsv").read_text().splitlines())
    train = read_phone_transcripts(pr_data / "train.phn")
    assert len(train) == 9 and all(t.phones == tuple(collapse_phones.collapse_repeats(frames[u].split(",")))
                                   for u, t in train.items())
    counts = dict(line.split() for line in (pr_data / "dict.phn.txt").read_text().splitlines())
    assert sum(map(int, counts.values())) == sum(len(t.phones) for t in train.values())  # counts of train
    assert len(load_phone_dictionary(pr_data / "dict.phn.txt")) == 4 + len(counts)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text((pr_data / "train.tsv").read_text() + "spk09/spk09_000.wav\t16000\n")
    with pytest.raises(UserError, match=r"train\.tsv:11: utterance spk09_000 has no line in"):
        collapse_phones.main(str(demo_corpus / "phones.tsv"), str(bad), splits="train")
