"""Usage: fairseq-ext-manifest ROOT --dest DIR [--ext wav,flac] [--valid-percent 0.01] [--seed 42]
                             [--sample-rate 16000] [--min-samples 0] [--skip-bad] [--jobs 8]

Write fairseq manifests ``{DEST}/train.tsv`` (and ``valid.tsv`` when ``--valid-percent`` > 0) for
every audio file under ROOT (recursively; hidden files, i.e. names starting with ".", are ignored).

Format (fairseq's, read by HubertDataset and every ``simple_kmeans`` script): line 1 is the
absolute audio root, then one ``relpath<TAB>n_samples`` line per file, sorted by path.
The valid split is a seeded random choice of ``round(P * N)`` files (at least one when P > 0), so
the same ROOT, percent and seed always give byte-identical manifests.

Every file is checked once with ``soundfile.info``: it must be readable, mono, non-empty, and at
``--sample-rate`` Hz (0 accepts any rate). All problems are collected and reported together:
  * by default they are fatal: nothing is written, the bad files are listed (also in
    ``{DEST}/bad_files.tsv``) and the exit status is 2;
  * with ``--skip-bad`` the bad files are left out of the manifests, listed in
    ``{DEST}/bad_files.tsv`` and in a warning.
Files shorter than ``--min-samples`` are not errors: they are left out and counted in the log.
Outputs are written to temporary names and renamed into place, so a rerun overwrites them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output, check_writable_dir
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("manifest")

MAX_LISTED = 20  # bad files named in the error message (all of them go to bad_files.tsv)


def parse_extensions(ext: str | Sequence[str]) -> Tuple[str, ...]:
    """``"wav,flac"`` or ``["wav", ".flac"]`` -> ``(".wav", ".flac")`` (lower case)."""
    items = ext.split(",") if isinstance(ext, str) else list(ext)
    out = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip())
    if not out:
        raise UserError("--ext is empty: give extensions like wav,flac")
    return out


def find_audio(root: Path, extensions: Sequence[str]) -> List[str]:
    """Relative paths (``/``-separated, sorted) of non-hidden files under ``root`` with one of ``extensions``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


def check_audio(path: str, sample_rate: int) -> Tuple[Optional[int], Optional[str]]:
    """``(n_samples, None)`` for a usable file, ``(None, reason)`` otherwise."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types for unreadable files
        return None, f"unreadable: {str(e).strip() or type(e).__name__}"
    if info.channels != 1:
        return None, f"{info.channels} channels, expected mono (e.g. sox in.wav -c 1 out.wav)"
    if sample_rate and info.samplerate != sample_rate:
        return None, (f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
                      f"(e.g. sox in.wav -r {sample_rate} out.wav)")
    if info.frames <= 0:
        return None, "no audio samples"
    return int(info.frames), None


def split_valid(n: int, valid_percent: float, seed: int) -> np.ndarray:
    """Boolean mask of the files that go to the valid split (seeded, ``round(P*n)`` files, >= 1 when P > 0)."""
    if not 0.0 <= valid_percent < 1.0:
        raise UserError(f"--valid-percent must be in [0, 1), got {valid_percent}")
    mask = np.zeros(n, dtype=bool)
    if valid_percent == 0.0 or n == 0:
        return mask
    if n < 2:
        raise UserError(f"only {n} usable audio file: cannot make a valid split; use --valid-percent 0")
    n_valid = min(max(1, round(valid_percent * n)), n - 1)
    mask[np.random.default_rng(seed).permutation(n)[:n_valid]] = True
    return mask


def _write_bad_list(dest: Path, bad: List[Tuple[str, str]]) -> Path:
    path = dest / "bad_files.tsv"
    with atomic_output(path) as f:
        f.write("path\tproblem\n")
        for rel, reason in bad:
            f.write(f"{rel}\t{reason}\n")
    return path


def _format_bad(root: Path, bad: List[Tuple[str, str]]) -> str:
    lines = [f"  {root / rel}: {reason}" for rel, reason in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)


def main(root: str, dest: str, ext: str = "wav,flac", valid_percent: float = 0.01, seed: int = 42,
         sample_rate: int = 16000, min_samples: int = 0, skip_bad: bool = False,
         jobs: int = 8) -> Dict[str, object]:
    """Write the manifests (see the module docstring).

    Returns:
        ``{"train": Path, "valid": Path | None, "n_train": int, "n_valid": int,
        "n_bad": int, "n_short": int}``.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"audio root {root} is not a folder")
    root_path = root_path.resolve()
    extensions = parse_extensions(ext)
    rels = find_audio(root_path, extensions)
    if not rels:
        raise UserError(
            f"no audio files with extension {', '.join(extensions)} under {root_path}: "
            f"check the folder, or pass --ext (e.g. --ext flac)")
    dest_path = check_writable_dir(dest)

    paths = [str(root_path / r) for r in rels]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # soundfile releases the GIL
        results = list(progress(pool.map(lambda p: check_audio(p, sample_rate), paths),
                                total=len(paths), desc="checking audio", unit="file"))

    good: List[Tuple[str, int]] = []
    bad: List[Tuple[str, str]] = []
    n_short = 0
    for rel, (n, reason) in zip(rels, results):
        if reason is not None:
            bad.append((rel, reason))
        elif n < min_samples:
            n_short += 1
        else:
            good.append((rel, n))
    if bad:
        listing = _write_bad_list(dest_path, bad)
        if not skip_bad:
            raise UserError(
                f"{len(bad)} of {len(rels)} audio files under {root_path} cannot be used "
                f"(full list in {listing}); fix or remove them, or rerun with --skip-bad "
                f"to leave them out:\n{_format_bad(root_path, bad)}")
        logger.warning("leaving out %d bad audio files (listed in %s):\n%s",
                       len(bad), listing, _format_bad(root_path, bad))
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest_path / "bad_files.tsv")
    if n_short:
        logger.info("left out %d files shorter than --min-samples %d", n_short, min_samples)
    if not good:
        raise UserError(f"no usable audio files under {root_path} (all bad or shorter than "
                        f"--min-samples {min_samples})")

    is_valid = split_valid(len(good), valid_percent, seed)
    out: Dict[str, object] = {"valid": None, "n_bad": len(bad), "n_short": n_short}
    for split, selected in (("train", ~is_valid), ("valid", is_valid)):
        path = dest_path / f"{split}.tsv"
        if split == "valid" and valid_percent == 0.0:
            if path.exists():
                logger.warning("removing stale %s (--valid-percent is 0)", path)
                path.unlink()
            out["n_valid"] = 0
            continue
        rows = [g for g, s in zip(good, selected) if s]
        with atomic_output(path) as f:
            f.write(f"{root_path}\n")
            f.writelines(f"{rel}\t{n}\n" for rel, n in rows)
        out[split] = path
        out[f"n_{split}"] = len(rows)
        logger.info("wrote %s: %d files, %.2f hours", path, len(rows),
                    sum(n for _, n in rows) / max(sample_rate, 1) / 3600)
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="root folder of the audio files (searched recursively)")
    parser.add_argument("--dest", required=True, help="output folder for train.tsv / valid.tsv")
    parser.add_argument("--ext", default="wav,flac", help="comma-separated audio extensions (case-insensitive)")
    parser.add_argument("--valid-percent", type=float, default=0.01,
                        help="fraction of files for valid.tsv (0: write only train.tsv)")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the valid split")
    parser.add_argument("--sample-rate", type=int, default=16000,
                        help="required sample rate in Hz (0: accept any)")
    parser.add_argument("--min-samples", type=int, default=0,
                        help="leave out files with fewer samples than this")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable / multi-channel / wrong-rate files instead of failing")
    parser.add_argument("--jobs", type=int, default=8, help="threads used to check the audio files")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
