"""The package's layers point one way, and the label CLIs that need no model stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path):
    """Top-level names of every module ``path`` imports (at any depth of the file)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno


@pytest.mark.parametrize("package, forbidden", [
    ("fairseq_ext", ("simple_kmeans", "scripts", "benchmarks", "tests")),
    ("simple_kmeans", ("scripts", "benchmarks", "tests")),
    ("fairseq_ext/base", ("torch", "fairseq", "fairseq_cli", "omegaconf", "hydra")),
])
def test_imports_point_down(package, forbidden):
    bad = [f"{p.relative_to(REPO)}:{line}: imports {mod}"
           for p in sorted((REPO / package).rglob("*.py"))
           for mod, line in imported_modules(p) if mod.split(".")[0] in forbidden]
    assert not bad, "\n".join(bad)


# Files that load code by path on purpose: a user's own PASE worker file (model.worker_files), and
# fairseq's reference scripts under examples/, which are not an importable package.
BY_PATH_ON_PURPOSE = {"fairseq_ext/modules/pase_workers/__init__.py", "benchmarks/reference.py",
                      "benchmarks/torchaudio_reference.py"}
PENDING: set = set()


def test_nothing_loads_code_by_file_path():
    bad = [f"{p.relative_to(REPO)}:{line}"
           for folder in ("fairseq_ext", "simple_kmeans", "scripts", "benchmarks")
           for p in sorted((REPO / folder).rglob("*.py"))
           if str(p.relative_to(REPO)) not in BY_PATH_ON_PURPOSE | PENDING
           for line, text in enumerate(p.read_text().splitlines(), 1)
           if "spec_from_file_location" in text or "load_script(" in text]
    assert not bad, "\n".join(bad)


def test_label_clis_import_neither_torch_nor_fairseq():
    """Importing the base, the package root and the model-free label steps registers nothing with fairseq."""
    code = ("import sys, fairseq_ext, fairseq_ext.base.steps, fairseq_ext.base.bad_audio, simple_kmeans.manifest, "
            "simple_kmeans.dump_mfcc_feature, simple_kmeans.learn_kmeans, simple_kmeans.merge_labels, "
            "simple_kmeans.pipeline; print(sorted(m for m in ('torch', 'fairseq', 'fairseq_ext.tasks') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_register_makes_every_name_known():
    """Registration is explicit: after ``register()`` fairseq knows the tasks, models and criteria."""
    code = ("import fairseq_ext; fairseq_ext.register(); from fairseq.tasks import TASK_REGISTRY; "
            "from fairseq.models import MODEL_REGISTRY; from fairseq.criterions import CRITERION_REGISTRY; "
            "print('dhubert_pretraining' in TASK_REGISTRY, 'dhubert' in MODEL_REGISTRY, 'am_softmax' in CRITERION_REGISTRY)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["True", "True", "True"], out.stdout + out.stderr
