"""``fairseq-ext-evaluate``: two tiny HuBERT upstreams judged on the demo corpus (phone recognition and
speaker ID, a handful of updates, two seeds), the per-layer probe figure; a rerun skips every run and probe;
bad input (unknown task, missing data, missing checkpoint) is a clear UserError.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.test_phone_recognition import write_pr_data
from tests.test_speaker_data import write_labeled_manifest


@pytest.fixture(scope="module")
def setup(demo_corpus, tmp_path_factory):
    from fairseq_ext.tiny_checkpoint import make_tiny_hubert_checkpoint

    base = tmp_path_factory.mktemp("evaluate")
    pr = write_pr_data(demo_corpus, base / "pr")
    sid = base / "sid"
    write_labeled_manifest(demo_corpus, sid)
    a = make_tiny_hubert_checkpoint(base / "a.pt", seed=0)
    b = make_tiny_hubert_checkpoint(base / "b.pt", seed=1)
    return {"base": base, "pr": pr, "sid": sid, "a": a, "b": b, "corpus": demo_corpus}


def run(setup, out: Path, **kw):
    from fairseq_ext import evaluate

    args = dict(upstreams=f"{setup['a']},{setup['b']}", names="hubert,dhubert", tasks="pr,sid", out=str(out),
                seeds="1", pr_data=str(setup["pr"]), sid_data=str(setup["sid"]), pr_updates=3, sid_updates=3,
                probe_tsv=str(setup["sid"] / "train.tsv"), probe_phones=str(setup["corpus"] / "phones.tsv"),
                probe_speakers=str(setup["corpus"] / "speakers.tsv"), probe_clusters=5, threads=1, jobs=2)
    args.update(kw)
    return evaluate.main(**args)


@pytest.fixture(scope="module")
def report(setup):
    out = setup["base"] / "out"
    return out, run(setup, out)


def test_table_json_and_figure(report):
    out, rep = report
    assert list(rep["upstreams"]) == ["hubert", "dhubert"] and rep["tasks"] == ["pr", "sid"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(rep))
    for name, row in rep["upstreams"].items():
        for task in ("pr", "sid"):
            cell = row["tasks"][task]
            assert cell["n"] == 1 and len(row["runs"][task]) == 1 and cell["sd"] == 0
            assert row["runs"][task][0]["updates"] == 3 and cell["mean"] == row["runs"][task][0]["value"]
        assert 0 <= row["tasks"]["sid"]["mean"] <= 100 and row["tasks"]["pr"]["mean"] >= 0
        cache = row["feature_cache"]  # each of the 12 utterances (9 train, 3 valid) encoded once, kept
        assert cache["files"] == 12 and cache["bytes"] > 12 * 3 * 64 * 4, cache
        layers = row["probe"]
        assert sorted(layers, key=int) == ["1", "2"]  # the tiny HuBERT's 2 transformer layers
        assert all(0 <= v["spk_acc"] <= 1 and 0 <= v["pnmi"] <= 1 for v in layers.values())
    md = (out / "report.md").read_text().splitlines()
    assert md[0] == "| upstream | PER % | SID acc % |"
    assert md[2].startswith("| hubert | ") and md[3].startswith("| dhubert | ")
    png = (out / "layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name in ("hubert", "dhubert"):
        for task in ("pr", "sid"):
            run_dir = out / "runs" / name / task / "seed1"
            assert (run_dir / "checkpoints" / "checkpoint_last.pt").is_file()
            assert "common.seed=1" in (run_dir / "train.log").read_text()


def test_mean_and_sd_over_seeds():
    from fairseq_ext.evaluate import markdown_table, mean_sd

    cell = mean_sd([10.0, 20.0])
    assert cell["mean"] == 15.0 and cell["sd"] == pytest.approx(7.0711, abs=1e-4) and cell["n"] == 2
    cells = {"pr": cell, "ks": mean_sd([50.0, 50.0])}
    rep = {"tasks": ["pr", "ks"], "seeds": [1, 2], "upstreams": {"a": {"tasks": cells}}}
    assert markdown_table(rep).splitlines()[:3] == ["| upstream | PER % | KS acc % |", "|---|---|---|",
                                                    "| a | 15.0 ± 7.1 | 50.0 ± 0.0 |"]


def test_rerun_skips_everything(report, setup, caplog):
    out, first = report
    before = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint_last.pt")}
    with caplog.at_level(logging.INFO):
        again = run(setup, out)
    assert all(r["skipped"] for row in again["upstreams"].values() for runs in row["runs"].values() for r in runs)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint_last.pt")} == before
    assert sum("skipping the probe" in r.getMessage() for r in caplog.records) == 2
    for name in first["upstreams"]:
        assert again["upstreams"][name]["tasks"] == first["upstreams"][name]["tasks"]


@pytest.mark.parametrize("kw, message", [
    ({"tasks": "pr,asr"}, "unknown task.*asr.*choose from pr, sid, ks"),
    ({"tasks": "pr,ks"}, "task ks needs its data: give --ks-data"),
    ({"pr_data": "/nonexistent/pr"}, "--pr-data /nonexistent/pr is not a folder"),
    ({"upstreams": "/nonexistent/x.pt"}, "upstream checkpoint /nonexistent/x.pt does not exist"),
    ({"names": "one"}, "--names gives 1 names for 2 upstreams"),
    ({"seeds": "1,x"}, "--seeds must be comma-separated integers"),
    ({"probe_phones": None, "probe_speakers": None}, "--probe-tsv needs --probe-phones"),
])
def test_bad_input_is_a_user_error(setup, tmp_path, kw, message):
    from fairseq_ext.base.errors import UserError

    if kw.get("upstreams"):
        kw["names"] = "x"
    with pytest.raises(UserError, match=message):
        run(setup, tmp_path / "out", **kw)
    assert not (tmp_path / "out" / "runs").exists()  # checked before any training


def test_missing_data_file_is_named(setup, tmp_path):
    import shutil

    from fairseq_ext.base.errors import UserError

    pr = tmp_path / "pr"
    shutil.copytree(setup["pr"], pr)
    (pr / "dict.phn.txt").unlink()
    with pytest.raises(UserError, match=f"--pr-data {pr} lacks dict.phn.txt"):
        run(setup, tmp_path / "out", pr_data=str(pr))


def test_cli_help():
    from fairseq_ext import evaluate

    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--help"])
    assert e.value.code == 0


# --------------------------------------------------------------------------- the feature cache


@pytest.mark.parametrize("where", ["memory", "folder"])
def test_feature_cache_is_exact_and_encodes_each_utterance_once(setup, tmp_path, where):
    import torch

    from fairseq_ext.base.errors import UserError
    from fairseq_ext.data.feature_cache import CachedUpstream
    from fairseq_ext.encoder import load_upstream

    upstream = load_upstream(str(setup["a"]))
    folder = "memory" if where == "memory" else str(tmp_path / "cache")
    cached = CachedUpstream(upstream, folder, {"upstream": "a"})
    assert cached.model is upstream.model and cached.dim == upstream.dim
    g = torch.Generator().manual_seed(0)
    lengths = [8000, 5000, 6400]
    wav = torch.randn(3, max(lengths), generator=g)
    mask = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    wav[mask] = 0
    ref_states, ref_mask = upstream(wav, mask)
    for _ in range(2):  # first pass fills the cache, second reads it
        states, frame_mask = cached(wav, mask)
        assert torch.equal(frame_mask, ref_mask)
        assert all(torch.allclose(s, r, atol=1e-5) for s, r in zip(states, ref_states))
    assert (cached.misses, cached.hits) == (3, 3)
    one, one_mask = cached(wav[1:2, :5000])  # one utterance alone: a hit, the unpadded states
    assert cached.hits == 4 and one_mask is None and torch.allclose(one[2][0], ref_states[2][1, :one[2].shape[1]])
    if where == "folder":
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
        again = CachedUpstream(upstream, folder, {"upstream": "a"})  # a later run reuses the files
        again(wav, mask)
        assert (again.misses, again.hits) == (0, 3)
        with pytest.raises(UserError, match="holds features of another upstream"):
            CachedUpstream(upstream, folder, {"upstream": "b"})
