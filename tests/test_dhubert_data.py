"""Tests of the dhubert_pretraining task's data: pitch shards, speakers, crop alignment, input errors.

Also holds the small writers of test inputs (k-means labels, speaker files, pitch shards and
statistics) that tests/test_dhubert_train.py reuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_ext.base.atomic import NpyStreamWriter
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.shards import shard_range

SR = 16000


# --------------------------------------------------------------------------- input writers


def write_km_labels(label_dir: Path, split: str, labels: Sequence[Sequence[int]], n_clusters: int) -> None:
    """``{split}.km`` (one line of ints per utterance) and ``dict.km.txt``."""
    label_dir.mkdir(parents=True, exist_ok=True)
    with open(label_dir / f"{split}.km", "w") as f:
        for lab in labels:
            f.write(" ".join(str(int(x)) for x in lab) + "\n")
    with open(label_dir / "dict.km.txt", "w") as f:
        f.writelines(f"{i} 1\n" for i in range(n_clusters))


def write_speakers(spk_dir: Path, split: str, names: Sequence[str], dict_names: Optional[Sequence[str]] = None) -> None:
    """``{split}.spk`` (one name per utterance) and ``dict.spk.txt`` (``name count``)."""
    spk_dir.mkdir(parents=True, exist_ok=True)
    (spk_dir / f"{split}.spk").write_text("".join(f"{n}\n" for n in names))
    if dict_names is not None:
        (spk_dir / "dict.spk.txt").write_text("".join(f"{n} {list(names).count(n)}\n" for n in dict_names))


def write_pitch(pitch_dir: Path, split: str, pitches: Sequence[np.ndarray], nshard: int = 1) -> None:
    """Pitch shards ``{split}_{rank}_{nshard}.npy/.len`` in fairseq's shard layout."""
    pitch_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(nshard):
        start, end = shard_range(len(pitches), nshard, rank)
        with NpyStreamWriter(pitch_dir / f"{split}_{rank}_{nshard}.npy", dim=2) as w:
            for p in pitches[start:end]:
                w.append(np.asarray(p, dtype=np.float32))
        (pitch_dir / f"{split}_{rank}_{nshard}.len").write_text("".join(f"{len(p)}\n" for p in pitches[start:end]))


def write_pitch_stats(pitch_dir: Path, split: str, pitches: Sequence[np.ndarray], speakers: Sequence[str]) -> Dict:
    """``{split}.pitch_stats.json`` over voiced frames' log F0, global and per speaker."""
    def stats(arrs: List[np.ndarray]) -> Dict[str, float]:
        v = np.concatenate([a[a[:, 1] > 0.5, 0] for a in arrs])
        return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}

    out = {"global": stats(list(pitches)),
           "speakers": {s: stats([p for p, t in zip(pitches, speakers) if t == s]) for s in sorted(set(speakers))}}
    (pitch_dir / f"{split}.pitch_stats.json").write_text(json.dumps(out))
    return out


def pitch_from_f0(f0: np.ndarray) -> np.ndarray:
    """(T,) F0 in Hz (0 = unvoiced) -> (T, 2) [log F0 interpolated over unvoiced frames, voiced]."""
    voiced = f0 > 0
    t = np.arange(len(f0))
    lf0 = np.log(np.where(voiced, f0, 1.0))
    if voiced.any():
        lf0 = np.interp(t, t[voiced], lf0[voiced])
    else:
        lf0 = np.zeros(len(f0))
    return np.stack([lf0, voiced.astype(np.float64)], 1).astype(np.float32)


def energy_labels(wav: np.ndarray, n_clusters: int) -> np.ndarray:
    """Trivial 100 Hz "k-means" labels: quantised log energy of 25 ms frames every 10 ms."""
    n = max((len(wav) - 400) // 160 + 1, 0)
    e = np.array([np.log(np.mean(wav[i * 160:i * 160 + 400] ** 2) + 1e-8) for i in range(n)])
    edges = np.linspace(-18.0, 0.0, n_clusters + 1)[1:-1]
    return np.digitize(e, edges)


# --------------------------------------------------------------------------- synthetic corpus


def position_corpus(root: Path, lengths: Sequence[int], label_rate: int = 100, pitch_rate: int = 100,
                    speakers: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """Audio, labels and pitch whose values encode their own position.

    Audio sample n of utterance u is ``n / 2**15`` (exact in float32 and FLOAT wav); label frame j
    is ``j`` and pitch frame j is ``[j + 1000 u, (j // 3) % 2]``, so a collated batch reveals the crop.
    """
    wav_dir, man = root / "wav", root / "manifest"
    wav_dir.mkdir(parents=True)
    man.mkdir()
    lines = [f"{wav_dir}\n"]
    labels, pitches = [], []
    for u, n in enumerate(lengths):
        sf.write(wav_dir / f"u{u}.wav", np.arange(n, dtype=np.float64) / 2 ** 15, SR, subtype="FLOAT")
        lines.append(f"u{u}.wav\t{n}\n")
        labels.append(np.arange(int(n * label_rate / SR)))
        nf = int(n * pitch_rate / SR)
        pitches.append(np.stack([np.arange(nf) + 1000.0 * u, (np.arange(nf) // 3) % 2], 1))
    (man / "train.tsv").write_text("".join(lines))
    write_km_labels(root / "labels", "train", labels, n_clusters=max(len(x) for x in labels))
    speakers = list(speakers) if speakers is not None else [f"s{u % 2}" for u in range(len(lengths))]
    write_speakers(root / "labels", "train", speakers, sorted(set(speakers)))
    write_pitch(root / "pitch", "train", pitches, nshard=2)
    write_pitch_stats(root / "pitch", "train", pitches, speakers)
    return {"data": man, "labels": root / "labels", "pitch": root / "pitch"}


def make_task(paths: Dict[str, Path], label_rate: float = 100.0, **overrides):
    import fairseq_ext
    fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes
    from fairseq_ext.tasks.dhubert_pretraining import DHubertPretrainingConfig, DHubertPretrainingTask

    cfg = DHubertPretrainingConfig(data=str(paths["data"]), label_dir=str(paths["labels"]), labels=["km"],
                                   label_rate=label_rate, pitch_dir=str(paths["pitch"]), pitch_norm="none",
                                   random_crop=True, max_sample_size=None, min_sample_size=None)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return DHubertPretrainingTask(cfg)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("label_rate,pitch_rate,pad_audio", [(100, 100, False), (50, 100, False), (100, 50, True)])
def test_crop_alignment(tmp_path, label_rate, pitch_rate, pad_audio):
    """Audio, labels, pitch and speaker of every sample come from the same crop."""
    lengths = [9600, 12800, 16000, 11200]
    paths = position_corpus(tmp_path, lengths, label_rate, pitch_rate)
    task = make_task(paths, label_rate=float(label_rate), pitch_rate=float(pitch_rate),
                     max_sample_size=8000, pad_audio=pad_audio)
    task.load_dataset("train")
    ds = task.datasets["train"]
    np.random.seed(0)
    starts_seen = set()
    for _ in range(5):
        batch = ds.collater([ds[i] for i in range(len(lengths))])
        src, lab, pitch = batch["net_input"]["source"], batch["target_list"][0], batch["pitch"]
        assert pitch.shape[0] == len(lengths) and pitch.shape[2] == 2
        for b, uid in enumerate(batch["id"].tolist()):
            start = int(round(float(src[b, 0]) * 2 ** 15))
            starts_seen.add(start)
            n = int((~batch["net_input"]["padding_mask"][b]).sum())
            assert torch.equal(src[b, :n].double() * 2 ** 15, torch.arange(start, start + n).double())
            l0 = int(round(start * label_rate / SR))
            n_lab = int(batch["target_lengths_list"][0][b])
            # labels are dictionary indices: symbol "j" of dict.km.txt has index j + 4 (bos/pad/eos/unk)
            assert lab[b, :n_lab].tolist() == [ds.label_processors[0].dictionary.index(str(j))
                                               for j in range(l0, l0 + n_lab)]
            p0 = int(round(start * pitch_rate / SR))
            n_p = int(batch["pitch_lengths"][b])
            assert n_p == int(round(n * pitch_rate / SR)) or not pad_audio
            assert torch.equal(pitch[b, :n_p, 0], torch.arange(p0, p0 + n_p).float() + 1000 * uid)
            assert torch.equal(pitch[b, :n_p, 1], ((torch.arange(p0, p0 + n_p) // 3) % 2).float())
            assert float(pitch[b, n_p:].abs().sum()) == 0.0
            assert int(batch["spk_id"][b]) == uid % 2  # dict.spk.txt order: s0, s1
    assert len(starts_seen) > 3, "random crops should vary"


def test_pitch_normalisation_modes(tmp_path):
    paths = position_corpus(tmp_path, [8000, 9600, 11200, 12800])
    stats = json.loads((paths["pitch"] / "train.pitch_stats.json").read_text())
    raw = {}
    for mode in ("none", "global", "speaker", "utterance"):
        task = make_task(paths, pitch_norm=mode)
        task.load_dataset("train")
        raw[mode] = task.datasets["train"].get_pitch(1)
    lf0 = raw["none"][:, 0].double()
    g, s1 = stats["global"], stats["speakers"]["s1"]
    assert torch.allclose(raw["global"][:, 0].double(), (lf0 - g["mean"]) / g["std"], atol=1e-4)
    assert torch.allclose(raw["speaker"][:, 0].double(), (lf0 - s1["mean"]) / s1["std"], atol=1e-4)
    voiced = raw["none"][:, 1] > 0.5
    u = raw["utterance"][voiced, 0].double()
    assert abs(float(u.mean())) < 1e-4 and abs(float(u.std(unbiased=False)) - 1) < 1e-3
    assert torch.equal(raw["speaker"][:, 1], raw["none"][:, 1])


def test_speaker_dict_order_and_checkpointed_state(tmp_path):
    paths = position_corpus(tmp_path, [8000, 9600, 11200], speakers=["bob", "amy", "bob"])
    (paths["labels"] / "dict.spk.txt").write_text("bob 2\namy 1\n")
    task = make_task(paths)
    task.load_dataset("train")
    ds = task.datasets["train"]
    assert task.speakers == ["bob", "amy"]
    assert [ds[i]["spk_id"] for i in range(3)] == [0, 1, 0]
    assert task.state_dict()["speakers"] == ["bob", "amy"]  # saved in checkpoints


def _error(paths, match, **overrides):
    task = make_task(paths, **overrides)
    with pytest.raises(UserError, match=match):
        task.load_dataset("train")


def test_bad_inputs(tmp_path):
    paths = position_corpus(tmp_path, [8000, 9600, 11200])
    spk = paths["labels"] / "train.spk"
    # missing speaker line: names the file and the first utterance without a speaker
    spk.write_text("s0\ns1\n")
    _error(paths, r"train\.spk has 2 lines .* 3 utterances.*u2\.wav")
    # speaker not in dict.spk.txt
    spk.write_text("s0\ns1\nnobody\n")
    _error(paths, r"train\.spk:3: speaker 'nobody' of u2\.wav is not in the speaker dictionary")
    spk.write_text("s0\ns1\ns0\n")
    # wrong label rate: labels are at 100 Hz
    _error(paths, r"look like 100 Hz, not the configured 50 Hz", label_rate=50.0)
    # wrong pitch rate
    _error(paths, r"pitch shards .*look like 100 Hz, not the configured 50 Hz", pitch_rate=50.0)
    # one utterance's pitch too short
    pitches = [np.zeros((50, 2)), np.zeros((60, 2)), np.zeros((20, 2))]
    for p in paths["pitch"].glob("train_*"):
        p.unlink()
    write_pitch(paths["pitch"], "train", pitches, nshard=1)
    _error(paths, r"1 of 3 utterances .*u2\.wav .*has 20 frames")
    # two shard sets
    write_pitch(paths["pitch"], "train", pitches, nshard=3)
    _error(paths, r"several shard sets .*nshard = 1, 3")
    # incomplete set
    for p in paths["pitch"].glob("train_*_1.*"):
        p.unlink()
    (paths["pitch"] / "train_1_3.npy").unlink()
    _error(paths, r"incomplete: ranks \[1\] of nshard=3")
    # speaker statistics missing a speaker
    stats = json.loads((paths["pitch"] / "train.pitch_stats.json").read_text())
    del stats["speakers"]["s1"]
    (paths["pitch"] / "train.pitch_stats.json").write_text(json.dumps(stats))
    for p in paths["pitch"].glob("train_*"):
        p.unlink()
    write_pitch(paths["pitch"], "train", [np.zeros((n // 160, 2)) for n in (8000, 9600, 11200)])
    _error(paths, r"no entry for speaker\(s\) s1", pitch_norm="speaker")
    make_task(paths, pitch_norm="global").load_dataset("train")  # the rest is fine


def test_labels_outside_the_dictionary_are_refused(tmp_path):
    """A label >= K or a truncated dict.km.txt stops loading with file and line (fairseq would train on
    <unk>); a missing or duplicated dict.km.txt is a sentence, not a traceback."""
    paths = position_corpus(tmp_path, [8000, 9600, 11200])
    km, dct = paths["labels"] / "train.km", paths["labels"] / "dict.km.txt"
    make_task(paths).load_dataset("train")  # consistent inputs load
    lines = km.read_text().splitlines()
    good_dict = dct.read_text()
    n_dict = len(good_dict.splitlines())
    lines[1] = lines[1] + f" {n_dict}"  # one label past the dictionary, on line 2
    km.write_text("\n".join(lines) + "\n")
    _error(paths, rf"train\.km:2: label '{n_dict}' is not in .*dict\.km\.txt")
    km.write_text("\n".join(lines[:1] + [" ".join(lines[1].split()[:-1])] + lines[2:]) + "\n")
    make_task(paths).load_dataset("train")
    dct.write_text("".join(good_dict.splitlines(keepends=True)[:n_dict - 5]))  # truncated dictionary
    _error(paths, r"train\.km:3: label '\d+' is not in .*dict\.km\.txt")
    dct.write_text(good_dict + "3 1\n")
    _error(paths, rf"dict\.km\.txt:{n_dict + 1}: '3' is listed twice \(also line 4\)")
    dct.unlink()
    _error(paths, r"label dictionary .*dict\.km\.txt does not exist")
