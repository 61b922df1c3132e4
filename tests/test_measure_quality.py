"""fairseq-ext-measure-quality: same numbers as fairseq's measure_teacher_quality.py, plus statistics."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.reference import fairseq_example
from simple_kmeans import measure_quality
from fairseq_ext.base.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PHONES = ["AA1", "AE0", "IY1", "S", "SH", "T", "sil", "M", "N2"]
K = 12


def _make(tmp_path: Path, seed: int = 0, rate_div: int = 1):
    """Manifests (train/valid), labels at 100/rate_div Hz correlated with phones, phone references."""
    rng = np.random.default_rng(seed)
    tsv, lab, phn = tmp_path / "tsv", tmp_path / "lab", tmp_path / "phn"
    for d in (tsv, lab, phn):
        d.mkdir(exist_ok=True)
    phone_of = {p: i for i, p in enumerate(PHONES)}
    phn_lines = {"dev-a": [], "dev-b": []}
    for split, n_utt in (("train", 5), ("valid", 4)):
        tsv_lines, lab_lines = ["/root"], []
        for u in range(n_utt):
            uid = f"{split}{u}"
            segs = [(PHONES[i], int(d)) for i, d in zip(rng.integers(0, len(PHONES), 12), rng.integers(2, 9, 12))]
            frames = [p for p, d in segs for _ in range(d)]
            hyps = [(phone_of[p] + int(rng.random() < 0.3) * int(rng.integers(1, K))) % K for p in frames]
            hyps = hyps[::rate_div]
            extra = int(rng.integers(-2, 3))  # label/reference length mismatch of a few frames
            hyps = hyps[:len(hyps) + extra] if extra < 0 else hyps + hyps[-1:] * extra
            tsv_lines.append(f"spk/{uid}.flac\t{160 * len(frames)}")
            lab_lines.append(" ".join(map(str, hyps)))
            phn_lines["dev-a" if u % 2 else "dev-b"].append(f"{uid}\t{','.join(frames)}")
        (tsv / f"{split}.tsv").write_text("\n".join(tsv_lines) + "\n")
        (lab / f"{split}.km").write_text("\n".join(lab_lines) + "\n")
    phn_lines["dev-b"].append("nolabels0\tS,S,T,T")  # a reference utterance without labels
    for name, lines in phn_lines.items():
        (phn / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return tsv, lab, phn


def _fairseq_numbers(mod, tsv, lab, phn, lab_sets, phn_sets, pad_len=0, upsample=1):
    refs, hyps = {}, {}
    for s in phn_sets:
        refs.update(mod.read_phn(f"{phn}/{s}.tsv"))
    for s in lab_sets:
        hyps.update(mod.read_lab(f"{tsv}/{s}.tsv", f"{lab}/{s}.km", pad_len, upsample))
    p_xy, _, _, tot, frmdiff, skipped = mod.comp_joint_prob(refs, hyps)
    _, ref_pur = mod.comp_purity(p_xy, axis=0)
    _, hyp_pur = mod.comp_purity(p_xy, axis=1)
    mi, mi_norm, _, h_ref, h_hyp = mod.comp_norm_mutual_info(p_xy)
    nums = {"ref pur": ref_pur, "hyp pur": hyp_pur, "H(ref)": h_ref, "H(hyp)": h_hyp, "MI": mi,
            "MI/H(ref)": mi_norm, "ref segL": mod.comp_avg_seg_dur(refs.values()),
            "hyp segL": mod.comp_avg_seg_dur(hyps.values()), "p_xy shape": list(p_xy.shape),
            "frm tot": tot, "frm diff": frmdiff, "utt tot": len(refs), "utt miss": len(skipped)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        mod._main(refs, hyps, False)
    return nums, out.getvalue()


@pytest.fixture(scope="module")
def fairseq_mtq():
    return fairseq_example("measure_teacher_quality.py")


@pytest.mark.parametrize("pad_len,upsample,rate_div", [(0, 1, 1), (0, 2, 2), (1, 1, 1), (2, 2, 2)])
def test_matches_fairseq(tmp_path, fairseq_mtq, pad_len, upsample, rate_div):
    tsv, lab, phn = _make(tmp_path, seed=pad_len + upsample, rate_div=rate_div)
    sets, phn_sets = ["train", "valid"], ["dev-a", "dev-b"]
    ref, printed = _fairseq_numbers(fairseq_mtq, tsv, lab, phn, sets, phn_sets, pad_len, upsample)
    ours = measure_quality.main(str(tsv), str(lab), "km", lab_sets=sets, phn_dir=str(phn), phn_sets=phn_sets,
                                pad_len=pad_len, upsample=upsample, quiet=True)["quality"]
    assert list(ours) == list(ref)
    for key, value in ref.items():
        if isinstance(value, float):
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key
        else:
            assert ours[key] == value, key
    assert ref["utt miss"] == 1 and ref["frm diff"] > 0 and 0.05 < ref["MI/H(ref)"] < 1
    # fairseq's printed table (tabulate, 4 decimals) shows the same values
    values = printed.splitlines()[-1].split()
    assert [float(v) for v in values[:8]] == [round(ours[k], 4) for k in list(ours)[:8]]


def test_lab_lab_mode_matches_fairseq(tmp_path, fairseq_mtq):
    tsv, lab, _ = _make(tmp_path, seed=3)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for s in ("train", "valid"):  # a coarser labelling of the same frames as the reference
        lines = [" ".join(str(int(t) // 3) for t in line.split()) for line in (lab / f"{s}.km").read_text().splitlines()]
        (ref_dir / f"{s}.ref").write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fairseq_mtq.main_lab_lab(str(tsv), str(lab), "km", ["train", "valid"], str(ref_dir), "ref")
    ours = measure_quality.main(str(tsv), str(lab), "km", lab_sets=["train", "valid"], ref_lab_dir=str(ref_dir),
                                ref_lab_name="ref", quiet=True)["quality"]
    values = [float(v) for v in out.getvalue().splitlines()[-1].split()[:8]]
    assert values == [round(ours[k], 4) for k in list(ours)[:8]]
    assert ours["ref pur"] == pytest.approx(1.0)  # every cluster maps to one coarse label


def test_statistics_without_references(tmp_path):
    tsv, lab = tmp_path / "tsv", tmp_path / "lab"
    tsv.mkdir()
    lab.mkdir()
    (tsv / "valid.tsv").write_text("/r\na/x.wav\t100\nb/y.wav\t100\n")
    (lab / "valid.km").write_text("0 0 0 1\n1 1 3 3\n")
    (lab / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(8)))
    report = measure_quality.main(str(tsv), str(lab), "km", quiet=True, json_path=str(tmp_path / "q.json"))
    st = report["stats"]
    assert report["quality"] is None
    assert (st["utterances"], st["frames"], st["K"], st["clusters used"]) == (2, 8, 8, 3)
    assert st["usage"] == pytest.approx(3 / 8)
    h = -(3 / 8 * math.log2(3 / 8) + 3 / 8 * math.log2(3 / 8) + 2 / 8 * math.log2(2 / 8))
    assert st["entropy (bits)"] == pytest.approx(h)
    assert st["perplexity"] == pytest.approx(2 ** h)
    assert st["avg segment length"] == pytest.approx(8 / 4)
    assert st["largest cluster share"] == pytest.approx(3 / 8)
    assert json.loads((tmp_path / "q.json").read_text())["stats"]["K"] == 8
    # --n-clusters overrides the dictionary
    st = measure_quality.main(str(tsv), str(lab), "km", n_clusters=4, quiet=True)["stats"]
    assert st["K"] == 4 and st["usage"] == pytest.approx(0.75)


def test_errors_name_files(tmp_path):
    tsv, lab, phn = _make(tmp_path)
    (lab / "valid.km").write_text("1 2\n")
    with pytest.raises(UserError, match="valid.km has 1 lines but .*valid.tsv lists 4"):
        measure_quality.main(str(tsv), str(lab), "km", quiet=True)
    with pytest.raises(UserError, match="missing.tsv does not exist"):
        measure_quality.main(str(tsv), str(lab), "km", lab_sets=["train"], phn_dir=str(phn),
                             phn_sets=["missing"], quiet=True)


def test_cli_fairseq_command_line(tmp_path):
    tsv, lab, phn = _make(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "simple_kmeans.measure_quality", str(tsv), str(lab), "km", "--lab_sets", "train",
         "valid", "--phn_dir", str(phn), "--phn_sets", "dev-a", "dev-b", "--json", str(tmp_path / "r.json")],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "PNMI (MI/H(ref))" in proc.stdout and "clusters used" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0 < report["quality"]["MI/H(ref)"] < 1


def test_report_names_its_units(tmp_path):
    """quality.txt: label-statistics entropy in bits, fairseq's entropies and MI in nats, lengths in frames."""
    tsv, lab, phn = _make(tmp_path)
    report = measure_quality.main(str(tsv), str(lab), "km", lab_sets=["valid"], phn_dir=str(phn),
                                  phn_sets=["dev-a"], quiet=True)
    rows = {}
    for line in measure_quality.format_report(report).splitlines():
        name, _, value = line.strip().rpartition("  ")
        if name and value.replace(".", "").isdigit():
            rows[name.strip()] = float(value)
    assert rows["entropy, bits"] == pytest.approx(report["stats"]["entropy (bits)"], abs=1e-4)
    for key in ("H(ref)", "H(hyp)", "MI"):
        assert rows[f"{key}, nats"] == pytest.approx(report["quality"][key], abs=1e-4)
    assert rows["avg segment length, frames"] > 0 and rows["ref segL, frames"] > 0
    assert not any(k in rows for k in ("H(ref)", "MI", "entropy (bits)"))
