"""User mistakes around outputs and models end in a sentence, not a traceback (issue 13, smaller class)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from fairseq_ext.base.errors import UserError
from fairseq_ext.kmeans.backends import load_centers


@pytest.mark.parametrize("content", [b"x\n110\n", bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))])
def test_garbage_kmeans_file_is_named_with_what_to_do(tmp_path, content):
    path = tmp_path / "km.mdl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"km.mdl is not a readable k-means model .*learn_kmeans"):
        load_centers(path)


def test_pipeline_output_folder_that_cannot_be_made_is_a_sentence(tmp_path, demo_corpus):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    proc = subprocess.run([sys.executable, "-m", "simple_kmeans.pipeline", str(demo_corpus / "wav"),
                           str(blocker / "out")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "is not writable" in proc.stderr and "Traceback" not in proc.stderr
