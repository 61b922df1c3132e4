"""The package installs, registers into fairseq, and every console script answers --help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _console_scripts():
    text = (REPO / "setup.py").read_text()
    block = text.split("CONSOLE_SCRIPTS = {", 1)[1].split("}", 1)[0]
    return re.findall(r'"([\w-]+)":\s*"([\w.]+)"', block)


@pytest.mark.parametrize("name,module", _console_scripts())
def test_script_help_has_usage(name, module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_user_dir_by_name_from_any_working_directory(tmp_path):
    """``--user-dir fairseq_ext`` resolves to the installed package from an unrelated folder."""
    code = (
        "import argparse, fairseq.utils as u;"
        "u.import_user_module(argparse.Namespace(user_dir='fairseq_ext'));"
        "import sys, fairseq_ext; print(fairseq_ext.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fairseq_ext" in out.stdout.strip().splitlines()[-1]


def test_register_allow_lists_safe_globals():
    import torch
    from fairseq.data.dictionary import Dictionary

    import fairseq_ext
    fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes

    assert Dictionary in torch.serialization.get_safe_globals()


def test_config_dir_finds_every_group():
    import fairseq_ext

    for group, name in (("pretrain", "dhubert_tiny.yaml"), ("pretrain", "pase.yaml"), ("speaker", "boss.yaml")):
        assert (fairseq_ext.config_dir(group) / name).is_file()
    with pytest.raises(FileNotFoundError):
        fairseq_ext.config_dir("no_such_group")


def test_every_registry_name_matches_its_file():
    """Tasks, models and criteria of this package are registered under their file names."""
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    import fairseq_ext
    fairseq_ext.register()  # tasks, models, criteria; allow-lists pickled classes

    pkg = REPO / "fairseq_ext"
    for folder, registry in (("tasks", TASK_REGISTRY), ("models", MODEL_REGISTRY), ("criteria", CRITERION_REGISTRY)):
        names = [p.stem for p in (pkg / folder).glob("*.py") if p.stem != "__init__"]
        assert names, folder
        for name in names:
            assert name in registry, f"fairseq_ext/{folder}/{name}.py registers no {folder[:-1]} named {name!r}"
            assert registry[name].__module__.startswith("fairseq_ext."), name
