"""Usage: python -m benchmarks.bench_fingerprint [--files 100000] [--gigabytes 1] [--workdir DIR]

Cost of the pipeline's input identity (``fairseq_ext.base.steps.file_fingerprint``: path, size,
mtime and a hash of the size and three 64 KiB blocks; ``simple_kmeans.pipeline.audio_signature`` of
a manifest) against a stat-only identity and a full SHA-256 of every file, on generated audio:

  many   --files tiny 16 kHz wav files of 0.05 s (1.6 kB each) listed in one manifest
  large  --gigabytes of 16 kHz wav files of 5 min (9.6 MB each)

Each measure is run twice: "first" right after the files were written (in the page cache: the
machine's free memory holds them), "again" a rerun. The generated files are deleted at the end unless
--workdir is given. Prints one line per measure: seconds and files/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fairseq_ext.base.cli import progress  # noqa: E402
from fairseq_ext.base.manifest import read_manifest  # noqa: E402
from simple_kmeans.pipeline import audio_signature  # noqa: E402

SR = 16000


def write_corpus(folder: Path, n_files: int, seconds: float, seed: int) -> Path:
    """``n_files`` 16-bit wav files of ``seconds`` of noise and their manifest ``folder/train.tsv``."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    wav_dir = folder / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines = [str(wav_dir)]
    for i in progress(range(n_files), desc=f"writing {n_files} files", total=n_files):
        rel = f"{i // 1000:03d}/{i:06d}.wav"
        (wav_dir / rel).parent.mkdir(exist_ok=True)
        sf.write(str(wav_dir / rel), (rng.standard_normal(n) * 0.1).clip(-1, 1), SR, subtype="PCM_16")
        lines.append(f"{rel}\t{n}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder / "train.tsv"


def stat_only(manifest) -> None:
    for e in manifest.entries:
        os.stat(manifest.audio_path(e))


def full_hash(manifest) -> None:
    for e in manifest.entries:
        h = hashlib.sha256()
        with open(manifest.audio_path(e), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)


def measure(name: str, tsv: Path) -> None:
    manifest = read_manifest(tsv)
    size = sum(os.path.getsize(manifest.audio_path(e)) for e in manifest.entries)
    for what, func in (("stat only", stat_only), ("fingerprint", audio_signature), ("full sha256", full_hash)):
        for run in ("first", "again"):
            start = time.perf_counter()
            func(manifest)
            s = time.perf_counter() - start
            print(f"{name:6s} {len(manifest):7d} files {size / 1e9:6.2f} GB  {what:12s} {run:6s} "
                  f"{s:8.2f} s  {len(manifest) / s:10.0f} files/s", flush=True)


def main(files: int, gigabytes: float, workdir: str | None) -> None:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench_fingerprint_"))
    try:
        if files:
            tsv = work / "many" / "train.tsv"
            measure("many", tsv if tsv.is_file() else write_corpus(work / "many", files, 0.05, 0))
        if gigabytes:
            n = max(1, int(round(gigabytes * 1e9 / (300 * SR * 2))))
            tsv = work / "large" / "train.tsv"
            measure("large", tsv if tsv.is_file() else write_corpus(work / "large", n, 300.0, 1))
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100000, help="tiny files in the 'many' case (0: skip it)")
    p.add_argument("--gigabytes", type=float, default=1.0, help="size of the 'large' case (0: skip it)")
    p.add_argument("--workdir", default=None, help="keep the generated files here (reused when present)")
    return p


if __name__ == "__main__":
    args = get_parser().parse_args()
    main(args.files, args.gigabytes, args.workdir)
