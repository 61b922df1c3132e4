"""fairseq-ext-export-espnet: ESPnet hubert1/ssl1 pseudo-label text and token list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simple_kmeans import export_espnet
from fairseq_ext.base.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def labels(tmp_path):
    tsv, lab = tmp_path / "tsv", tmp_path / "lab"
    tsv.mkdir()
    lab.mkdir()
    (tsv / "train.tsv").write_text("/data/audio\nspkB/b_001.wav\t320\nspkA/a_002.flac\t480\nspkA/a_001.wav\t160\n")
    (lab / "train.km").write_text("3 3 1\n0 4 4 4\n2\n")
    (tsv / "valid.tsv").write_text("/data/audio\nspkC/c_001.wav\t160\n")
    (lab / "valid.km").write_text("4 0\n")
    (lab / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(5)))
    return tsv, lab


def test_text_token_list_and_scp(labels, tmp_path):
    tsv, lab = labels
    out = export_espnet.main(str(tsv), str(lab), ["train", "valid"], str(tmp_path / "esp"))
    d = tmp_path / "esp" / "train"
    assert (d / "text").read_text() == "a_001 2\na_002 0 4 4 4\nb_001 3 3 1\n"  # sorted by utterance id
    assert (d / "wav.scp").read_text().splitlines()[0] == "a_001 /data/audio/spkA/a_001.wav"
    assert (d / "utt2num_samples").read_text() == "a_001 160\na_002 480\nb_001 320\n"
    assert (tmp_path / "esp" / "valid" / "text").read_text() == "c_001 4 0\n"
    assert out["tokens"].read_text().splitlines() == ["0", "1", "2", "3", "4", "<unk>", "<sos/eos>"]


def test_relpath_ids_and_duplicates(labels, tmp_path):
    tsv, lab = labels
    (tsv / "train.tsv").write_text("/data\nx/utt.wav\t160\ny/utt.wav\t160\nz/other.wav\t160\n")
    with pytest.raises(UserError, match="'utt' is used twice .*--uid-style relpath"):
        export_espnet.main(str(tsv), str(lab), "train", str(tmp_path / "esp"))
    export_espnet.main(str(tsv), str(lab), "train", str(tmp_path / "esp"), uid_style="relpath", n_clusters=7)
    assert (tmp_path / "esp" / "train" / "text").read_text() == "x-utt 3 3 1\ny-utt 0 4 4 4\nz-other 2\n"
    assert len((tmp_path / "esp" / "tokens.txt").read_text().splitlines()) == 7 + 2


def test_refusals(labels, tmp_path):
    tsv, lab = labels
    with pytest.raises(UserError, match=r"train.km:1: labels must be integers in 0..2, got .3 3 1."):
        export_espnet.main(str(tsv), str(lab), "train", str(tmp_path / "esp"), n_clusters=3)
    (lab / "train.km").write_text("1\n")
    with pytest.raises(UserError, match="train.km has 1 lines but .*train.tsv lists 3"):
        export_espnet.main(str(tsv), str(lab), "train", str(tmp_path / "esp"))
    (lab / "dict.km.txt").unlink()
    with pytest.raises(UserError, match="K unknown"):
        export_espnet.main(str(tsv), str(lab), "valid", str(tmp_path / "esp"))


def test_cli(labels, tmp_path):
    tsv, lab = labels
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.export_espnet", str(tsv), str(lab), "train", "valid",
                           "--out-dir", str(tmp_path / "esp")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "esp" / "valid" / "wav.scp").exists()
