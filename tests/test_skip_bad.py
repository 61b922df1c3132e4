"""--skip-bad end to end: corrupted audio in the middle of a 2-shard manifest.

Every step after the dump follows the kept files: label shards, merged labels and the kept-files
manifest (which fairseq's HubertDataset loads with the labels), speaker labels, pitch statistics
and the one-command pipeline. Without --skip-bad the error names the file and its manifest line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from simple_kmeans import (dump_km_label, dump_mfcc_feature, dump_pitch_feature, learn_kmeans, merge_labels,
                           pipeline, pitch_stats, speaker_labels)
from fairseq_ext.base.bad_audio import write_kept_manifest
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import read_manifest
from test_faults import _corrupt_corpus  # 8 demo files; line 3 garbage (shard 0), line 7 truncated (shard 1)

K = 4


def _mfcc_frames(n_samples: int) -> int:
    return 1 + (n_samples - 400) // 160


def _check_hubert_dataset(tsv: Path, km: Path, kept_lines: int) -> None:
    """fairseq's HubertDataset reads the kept manifest with the labels; labels match the audio frames."""
    from fairseq.data.audio.hubert_dataset import HubertDataset

    ds = HubertDataset(str(tsv), 16000, [str(km)], [100], [-1], [-1], shuffle=False)
    assert len(ds) == kept_lines
    for i in range(len(ds)):
        assert len(ds.get_label(i, 0).split()) == _mfcc_frames(ds.sizes[i])
    assert ds[0]["source"].numel() == ds.sizes[0]  # the audio of a kept line decodes


@pytest.fixture
def corrupt(demo_corpus, tmp_path):
    man, bad = _corrupt_corpus(demo_corpus, tmp_path)
    return {"man": man, "bad": bad, "tmp": tmp_path}


def test_label_steps_follow_the_kept_files(corrupt, caplog):
    man, bad, tmp = corrupt["man"], corrupt["bad"], corrupt["tmp"]
    feat, lab, kept_dir = tmp / "feat", tmp / "lab", tmp / "kept"
    for rank in range(2):
        dump_mfcc_feature.main(str(man), "train", 2, rank, str(feat), skip_bad=True)
    learn_kmeans.main(str(feat), "train", 2, str(tmp / "km.mdl"), K, backend="faiss", niter=5)
    with caplog.at_level(logging.WARNING, logger="dump_km_label"):
        for rank in range(2):
            dump_km_label.main(str(feat), "train", str(tmp / "km.mdl"), 2, rank, str(lab))
    assert "the feature shard left out 1 bad file(s)" in caplog.text and "train_1_2.skipped.tsv" in caplog.text

    # without --feat-dir, the counts against the manifest cannot know the skipped files
    with pytest.raises(UserError, match=r"train_0_2.km has 3 lines but shard 0/2 .* has 4 .*pass --feat-dir"):
        merge_labels.main(str(lab), "train", 2, tsv_dir=str(man), n_clusters=K)
    with pytest.raises(UserError, match="--kept-manifest-dir needs --tsv-dir"):
        merge_labels.main(str(lab), "train", 2, feat_dir=str(feat), kept_manifest_dir=str(kept_dir))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="merge_labels"):
        out = merge_labels.cli([str(lab), "train", "2", "--tsv-dir", str(man), "--feat-dir", str(feat),
                                "--n-clusters", str(K), "--kept-manifest-dir", str(kept_dir)])
    assert out is None and "2 bad file(s) were left out" in caplog.text
    kept = read_manifest(kept_dir / "train.tsv")
    full = read_manifest(man / "train.tsv")
    assert [e.relpath for e in kept.entries] == [e.relpath for e in full.entries if e.line not in (3, 7)]
    lines = (lab / "train.km").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [_mfcc_frames(e.n_samples) for e in kept.entries]
    _check_hubert_dataset(kept_dir / "train.tsv", lab / "train.km", 6)

    # the kept manifest given where the original one is expected: refused, never silently misaligned
    with pytest.raises(UserError, match=r"lists .* at line 3 of the manifest.*not the kept-files manifest"):
        merge_labels.main(str(lab), "train", 2, tsv_dir=str(kept_dir), feat_dir=str(feat), n_clusters=K)
    # a label shard that lost a line is still caught, naming the skipped count
    shard = lab / "train_1_2.km"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(UserError, match=r"train_1_2.km has 2 lines but shard 1/2 .* has 3 utterances "
                                            r"\(lines 6-9 minus 1 skipped\)"):
        merge_labels.main(str(lab), "train", 2, tsv_dir=str(man), feat_dir=str(feat), n_clusters=K)


def test_speakers_and_pitch_stats_follow_the_kept_files(corrupt, demo_corpus):
    man, tmp = corrupt["man"], corrupt["tmp"]
    table = str(demo_corpus / "speakers.tsv")
    feat = tmp / "pitch"
    for rank in range(2):
        dump_pitch_feature.main(str(man), "train", 2, rank, str(feat), frame_rate=100, skip_bad=True)
    kept_dir = tmp / "kept"
    write_kept_manifest(man, "train", 2, feat, kept_dir)
    # reference: the kept files dumped on their own, with the speakers of the kept manifest
    ref_feat, ref_spk = tmp / "ref_pitch", tmp / "ref_spk"
    dump_pitch_feature.main(str(kept_dir), "train", 1, 0, str(ref_feat), frame_rate=100)
    kept_spk = speaker_labels.main(str(kept_dir), "train", str(ref_spk), table=table)
    reference = pitch_stats.merge_stats(str(ref_feat), "train", 1, str(kept_spk))
    assert len(reference["speakers"]) >= 2

    # a .spk of the kept manifest: one line per kept file, taken as is
    assert pitch_stats.merge_stats(str(feat), "train", 2, str(kept_spk)) == reference
    # a .spk of the original manifest: the skipped lines are dropped with --tsv-dir ...
    full_spk = speaker_labels.main(str(man), "train", str(tmp / "full_spk"), table=table)
    assert len(full_spk.read_text().splitlines()) == 8
    path = pitch_stats.main(str(feat), "train", 2, spk_file=str(full_spk), tsv_dir=str(man))
    assert json.loads(path.read_text()) == json.loads(json.dumps(reference))
    # ... and refused without it (a shifted speaker list would mis-assign speakers)
    with pytest.raises(UserError, match=r"has 8 lines but the pitch shards of train hold 6 utterances "
                                            r"\(2 skipped by --skip-bad\).*--tsv-dir"):
        pitch_stats.merge_stats(str(feat), "train", 2, str(full_spk))


def test_pipeline_skip_bad_end_to_end(corrupt, capsys):
    man, bad, tmp = corrupt["man"], corrupt["bad"], corrupt["tmp"]
    out = tmp / "out"
    with pytest.raises(UserError, match=rf"train.tsv:3: cannot read audio file {bad[0]}.*--skip-bad"):
        pipeline.main(str(out), tsv_dir=str(man), nshard=2, jobs=1, n_clusters=K, quiet=True)

    res = pipeline.main(str(out), tsv_dir=str(man), nshard=2, jobs=1, n_clusters=K, skip_bad=True)
    printed = capsys.readouterr().out
    assert res["bad_files"]["manifest"] == 0 and res["bad_files"]["features"] == 2
    reports = [out / "feat" / f"train_{r}_2.skipped.tsv" for r in range(2)]
    assert res["bad_files"]["reports"] == reports
    assert "left out 2 bad audio file(s)" in printed and str(reports[1]) in printed
    data = res["data_dir"]
    assert data == out / "kept_manifest" and f"task.data={data} " in res["train_command"]
    kept = read_manifest(data / "train.tsv")
    assert len(kept) == 6 and not {p.name for p in bad} & {Path(e.relpath).name for e in kept.entries}
    lines = (out / "labels" / "train.km").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [_mfcc_frames(e.n_samples) for e in kept.entries]
    assert res["report"]["stats"]["utterances"] == 6  # the quality step reads the kept manifest
    _check_hubert_dataset(data / "train.tsv", out / "labels" / "train.km", 6)
    labels = np.array([int(t) for line in lines for t in line.split()])
    assert labels.max() < K

    again = pipeline.main(str(out), tsv_dir=str(man), nshard=2, jobs=1, n_clusters=K, skip_bad=True, quiet=True)
    assert again["ran"] == [] and again["bad_files"]["features"] == 2
    (data / "train.tsv").unlink()  # the kept manifest is an output of the merge: its loss redoes the merge
    again = pipeline.main(str(out), tsv_dir=str(man), nshard=2, jobs=1, n_clusters=K, skip_bad=True, quiet=True)
    assert "merge/train" in again["ran"] and len(read_manifest(data / "train.tsv")) == 6
