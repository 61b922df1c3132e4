"""A first hour without surprises: the set-up hides only pip's expected torchaudio complaint, every
command's logging hides third-party noise that looks like failure, every shipped config writes
TensorBoard logs under its run folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

TORCHAUDIO = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are "
              "installed. This behaviour is the source of the following dependency conflicts.\n"
              "ve-fairseq 0.12.3 requires torchaudio>=0.8.0, which is not installed.\n")
OTHER = "somepkg 1.0 requires numpy<2, but you have numpy 2.4.6 which is incompatible.\n"


def _fake_python(tmp_path: Path, pip_stderr: str) -> Path:
    """A `python` that answers `-m pip ...` with ``pip_stderr`` (status 0), says torch and fairseq import
    (without the seconds of importing them), and runs everything else."""
    (tmp_path / "pip_stderr.txt").write_text(pip_stderr)
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $*" >> {tmp_path / 'pip_calls.txt'}
  cat {tmp_path / 'pip_stderr.txt'} >&2
  exit 0
fi
if [ "$1" = "-c" ] && {{ [ "$2" = "import torch" ] || [ "$2" = "import fairseq" ]; }}; then exit 0; fi
exec {sys.executable} "$@"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def _setup(tmp_path: Path, pip_stderr: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": str(_fake_python(tmp_path, pip_stderr)), "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(REPO / "scripts" / "setup_env.sh")], capture_output=True, text=True,
                          env=env, timeout=120)


def test_setup_hides_only_the_expected_torchaudio_conflict(tmp_path):
    r = _setup(tmp_path, TORCHAUDIO)
    assert r.returncode == 0, r.stderr
    assert "torchaudio" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    assert "Failed to initialize NumPy" not in r.stderr + r.stdout
    assert r.stdout.count("[setup] expected:") == 1 and "[setup] ok: fairseq_ext" in r.stdout
    calls = (tmp_path / "pip_calls.txt").read_text()
    assert "-r requirements.txt torch==" in calls  # torch pinned to the installed version
    assert "tensorboardX" in (REPO / "requirements.txt").read_text()


def test_setup_shows_any_other_conflict(tmp_path):
    r = _setup(tmp_path, TORCHAUDIO + OTHER)
    assert r.returncode == 0
    assert "ERROR: pip's dependency resolver" in r.stderr and "somepkg 1.0 requires numpy<2" in r.stderr


CLI_NOISE = ("AVX512", "AVX2", "ModuleNotFoundError", "Please install tensorboardX", "Failed to initialize NumPy",
             "pkg_resources")


def test_cli_logging_hides_faiss_and_fairseq_import_noise():
    code = ("import logging\n"
            "from fairseq_ext.base.cli import setup_logging\n"
            "setup_logging()\n"
            "import faiss, fairseq.tasks, pyworld\n"
            "logging.getLogger('faiss.loader').warning('a real faiss warning')\n"
            "logging.getLogger('mine').info('still at INFO')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "LOGLEVEL": "INFO"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not [n for n in CLI_NOISE if n in r.stderr], r.stderr
    assert "a real faiss warning" in r.stderr and "still at INFO" in r.stderr  # warnings and our INFO stay


def test_quiet_loggers_is_one_mechanism():
    """Only base/cli.py defines which loggers are quieted; everything else goes through setup_logging."""
    defined = [p.relative_to(REPO) for folder in ("fairseq_ext", "simple_kmeans")
               for p in (REPO / folder).rglob("*.py") if "def quiet_loggers" in p.read_text()]
    assert [str(p) for p in defined] == ["fairseq_ext/base/cli.py"]


def _shipped_configs():
    return sorted(p for p in (REPO / "config").glob("*/*.yaml"))


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_logs_tensorboard_under_the_run_folder(path):
    cfg = yaml.safe_load(path.read_text())
    logdir = (cfg.get("common") or {}).get("tensorboard_logdir")
    assert logdir and not os.path.isabs(logdir), f"{path}: set common.tensorboard_logdir (relative: the run folder)"
