"""train_run.run_logged: the progress bar follows fairseq's JSON log records as the trainer writes them."""

import sys
import time


from fairseq_ext.train_run import _progress_fields, parse_log, run_logged

FAKE_TRAINER = r'''
import json, sys, time
def rec(kind, d):
    print(f"[2026-01-01 00:00:00,000][{kind}][INFO] - " + json.dumps(d), flush=True)
print("some fairseq chatter", flush=True)
for u in (10, 20, 30):
    rec("train_inner", {"epoch": 1, "loss": f"{5 - u / 10:.3f}", "ups": "12.5", "num_updates": str(u)})
    time.sleep(0.15)
rec("valid", {"epoch": 1, "valid_loss": "2.75", "valid_num_updates": "30"})
time.sleep(float(sys.argv[1]))
sys.exit(int(sys.argv[2]))
'''


def _run(tmp_path, sleep, status, timeout=None):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    log_path = tmp_path / "train.log"
    with open(log_path, "a") as log:
        log.write("# an earlier session\n")
        log.flush()
        return run_logged([sys.executable, str(script), str(sleep), str(status)], tmp_path, None, log, log_path,
                          done=0, max_update=30, timeout=timeout, name="tiny", poll=0.05), log_path


def test_progress_fields_reads_each_kind():
    inner, valid, train = parse_log(
        '[x][train_inner][INFO] - {"loss": "3.1", "ups": "2.0", "num_updates": "7", "wpb": "9"}\n'
        '[x][valid][INFO] - {"valid_loss": "2.5", "valid_num_updates": "8"}\n'
        '[x][train][INFO] - {"train_loss": "3.0", "train_num_updates": "8"}')
    assert _progress_fields(inner) == {"loss": "3.1", "num_updates": "7"}
    assert _progress_fields(valid) == {"valid_loss": "2.5", "num_updates": "8"}
    assert _progress_fields(train) == {"loss": "3.0", "num_updates": "8"}


def test_bar_shows_updates_and_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAIRSEQ_EXT_PROGRESS", "1")
    status, log_path = _run(tmp_path, 0, 0)
    assert status == 0
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "tiny" in last and "30/30" in last, err
    assert "loss=2.000" in last and "valid_loss=2.75" in last and "upd/s" in last, err
    text = log_path.read_text()  # the trainer's output is still all in the log, after the earlier session
    assert text.startswith("# an earlier session\n") and "some fairseq chatter" in text
    assert len(parse_log(text)) == 4


def test_no_bar_when_not_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FAIRSEQ_EXT_PROGRESS", raising=False)
    status, _ = _run(tmp_path, 0, 3)
    assert status == 3
    assert "30/30" not in capsys.readouterr().err


def test_timeout_kills_the_trainer(tmp_path):
    start = time.monotonic()
    status, _ = _run(tmp_path, 60, 0, timeout=1.0)
    assert status is None
    assert time.monotonic() - start < 20
