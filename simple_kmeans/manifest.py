"""Usage: fairseq-ext-manifest ROOT --dest DIR [--ext wav,flac] [--valid-percent 0.01] [--seed 42]
                             [--sample-rate 16000] [--min-samples 0] [--skip-bad] [--jobs 8]

Write fairseq manifests ``{DEST}/train.tsv`` (and ``valid.tsv`` when ``--valid-percent`` > 0) for
every audio file under ROOT (recursively; hidden files, i.e. names starting with ".", are ignored).
Each real folder is walked once and each real file listed once: directory links to folders
scanned already (loops such as ``ln -s . sub``) are not followed, and a file reached again
through a link is listed once; both are reported in a warning, as are audio files of other types
than ``--ext`` (e.g. ``.ogg`` in a folder scanned for ``wav,flac``).

Format (fairseq's, read by HubertDataset and every ``simple_kmeans`` script): line 1 is the
absolute audio root, then one ``relpath<TAB>n_samples`` line per file, sorted by path.
The valid split is a seeded random choice of ``round(P * N)`` files (at least one when P > 0), so
the same ROOT, percent and seed always give byte-identical manifests.

Every file is checked once with ``soundfile.info``: it must be readable, mono, non-empty, and at
``--sample-rate`` Hz (0 accepts any rate); the samples of float files are read too: NaN or Inf
samples make a file bad, samples far outside [-1, 1] get a warning. A file whose name a manifest
line cannot hold (a tab or line break, not UTF-8) or a broken or looping symbolic link is bad as
well. All problems are collected and reported together:
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
import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output, check_writable_dir
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError
from fairseq_ext.base.manifest import FAR_OUT_OF_RANGE, far_out_of_range

logger = logging.getLogger("manifest")

MAX_LISTED = 20  # bad files named in the error message (all of them go to bad_files.tsv)


def parse_extensions(ext: str | Sequence[str]) -> Tuple[str, ...]:
    """``"wav,flac"`` or ``["wav", ".flac"]`` -> ``(".wav", ".flac")`` (lower case)."""
    items = ext.split(",") if isinstance(ext, str) else list(ext)
    out = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip())
    if not out:
        raise UserError("--ext is empty: give extensions like wav,flac")
    return out


AUDIO_EXTENSIONS = frozenset({
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".aifc", ".au",
    ".snd", ".sph", ".nist", ".w64", ".rf64", ".caf", ".webm", ".mka", ".amr", ".ape", ".wv", ".spx"})
"""Extensions counted as "audio of another type" when a scan leaves them out (see ``--ext``)."""

UNLISTABLE = "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
"""Characters a manifest line cannot hold in a file name (its column separator and line breaks)."""

FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
"""soundfile subtypes whose samples can be NaN/Inf or far outside [-1, 1] (integer PCM cannot)."""


@dataclass
class AudioScan:
    """What :func:`scan_audio` found under a root folder.

    Attributes:
        files: relative paths (``/``-separated, sorted) of the audio files, each real file once.
        bad: ``(relpath as shown, problem)`` of files that cannot be listed (names with tabs or line
            breaks, names that are not UTF-8, broken or looping symbolic links).
        duplicates: ``(relpath, relpath listed instead)`` of files reached a second time through a
            symbolic (or hard) link.
        loops: directory links not followed because their folder is scanned already.
        other_types: ``{extension: count}`` of audio files of types not in the extensions asked for.
    """

    files: List[str] = field(default_factory=list)
    bad: List[Tuple[str, str]] = field(default_factory=list)
    duplicates: List[Tuple[str, str]] = field(default_factory=list)
    loops: List[str] = field(default_factory=list)
    other_types: Dict[str, int] = field(default_factory=dict)


def shown_name(rel: str) -> str:
    """``rel`` as it can be printed and written to a TSV: escaped when it holds control characters
    or bytes that are not UTF-8."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return repr(rel)[1:-1]
    return repr(rel)[1:-1] if any(c in UNLISTABLE for c in rel) else rel


def _name_problem(rel: str) -> Optional[str]:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8, which a manifest cannot hold: rename the file"
    if any(c in UNLISTABLE for c in rel):
        return "the file name contains a tab or line break, which a manifest cannot hold: rename the file"
    return None


def _link_problem(path: str, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symbolic link loop (the link points to itself or round a circle): remove or fix the link"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link to {os.readlink(path)}: remove or fix the link"
    return f"cannot be opened: {e.strerror or e}"


def scan_audio(root: Path, extensions: Sequence[str]) -> AudioScan:
    """Find the non-hidden files under ``root`` with one of ``extensions``.

    Each real folder is walked once and each real file listed once: the folders under ``root``
    are walked first, then the folders that directory links lead to, unless already walked (so
    a loop such as ``ln -s . sub`` adds nothing). A file reached by several paths is listed by
    its path without links when it has one, else by its first path in sorted order.
    """
    scan = AudioScan()
    seen_dirs: Set[Tuple[int, int]] = set()
    found: List[Tuple[bool, str, Tuple[int, int]]] = []  # (reached through a link, relpath, file identity)
    links: List[str] = []

    def walk(top: str, through_link: bool) -> None:
        for dirpath, dirnames, filenames in os.walk(top):  # does not descend into directory links
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            subdirs = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                (links if os.path.islink(os.path.join(dirpath, d)) else subdirs).append(os.path.join(dirpath, d))
            dirnames[:] = [os.path.basename(d) for d in subdirs]
            for name in sorted(filenames):
                ext = os.path.splitext(name)[1].lower()
                if name.startswith(".") or ext not in extensions:
                    if ext in AUDIO_EXTENSIONS and not name.startswith("."):
                        scan.other_types[ext] = scan.other_types.get(ext, 0) + 1
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                problem = _name_problem(rel)
                if problem is None:
                    try:
                        fst = os.stat(path)
                    except OSError as e:
                        problem = _link_problem(path, e)
                if problem is not None:
                    scan.bad.append((shown_name(rel), problem))
                    continue
                found.append((through_link or os.path.islink(path), rel, (fst.st_dev, fst.st_ino)))

    walk(str(root), False)
    while links:
        link = links.pop(0)
        st = os.stat(link)
        if (st.st_dev, st.st_ino) in seen_dirs:
            scan.loops.append(os.path.relpath(link, root).replace(os.sep, "/"))
        else:
            walk(link, True)
    kept: Dict[Tuple[int, int], str] = {}
    for _, rel, ident in sorted(found):
        if ident in kept:
            scan.duplicates.append((rel, kept[ident]))
        else:
            kept[ident] = rel
    scan.files = sorted(kept.values())
    scan.bad.sort()
    scan.duplicates.sort()
    return scan


def find_audio(root: Path, extensions: Sequence[str]) -> List[str]:
    """Relative paths (``/``-separated, sorted) of the audio files the manifest step checks (:func:`scan_audio`)."""
    return scan_audio(root, extensions).files


def check_audio(path: str, sample_rate: int) -> Tuple[Optional[int], Optional[str], Optional[float]]:
    """``(n_samples, None, peak)`` for a usable file, ``(None, reason, None)`` otherwise.

    ``peak`` is the largest sample magnitude when it is far outside [-1, 1] (else None). Only
    float files can hold such samples or NaN/Inf ones, so only their samples are read.
    """
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types for unreadable files
        return None, f"unreadable: {str(e).strip() or type(e).__name__}", None
    if info.channels != 1:
        return None, f"{info.channels} channels, expected mono (e.g. sox in.wav -c 1 out.wav)", None
    if info.samplerate <= 0:
        return None, f"sample rate {info.samplerate} Hz in the file header: the file is damaged", None
    if sample_rate and info.samplerate != sample_rate:
        return None, (f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
                      f"(e.g. sox in.wav -r {sample_rate} out.wav)"), None
    if info.frames <= 0:
        return None, "no audio samples", None
    peak = None
    if info.subtype in FLOAT_SUBTYPES:
        try:
            n_bad, top = 0, 0.0
            for block in sf.blocks(path, blocksize=1 << 20, dtype="float64"):
                finite = np.isfinite(block)
                n_bad += int(block.size - np.count_nonzero(finite))
                top = max(top, float(np.abs(block[finite]).max(initial=0.0)))
        except Exception as e:
            return None, f"unreadable: {str(e).strip() or type(e).__name__}", None
        if n_bad:
            return None, f"{n_bad} non-finite samples (NaN or Inf): repair or remove the file", None
        peak = far_out_of_range(np.array([top]))
    return int(info.frames), None, peak


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


def _log_scan(root: Path, scan: AudioScan, extensions: Sequence[str]) -> None:
    """Say what the scan left out: files reached twice through links, link loops, other audio types."""
    if scan.duplicates:
        logger.warning("%d file(s) are reached a second time through symbolic (or hard) links and listed once:\n%s",
                       len(scan.duplicates),
                       _format_bad(root, [(rel, f"same file as {first}") for rel, first in scan.duplicates]))
    if scan.loops:
        logger.warning("not following %d directory link(s) to folders scanned already (link loops or "
                       "duplicate links): %s", len(scan.loops), ", ".join(scan.loops[:MAX_LISTED]))
    if scan.other_types:
        types = ", ".join(f"{n} {e}" for e, n in sorted(scan.other_types.items()))
        wanted = ",".join(e.lstrip(".") for e in (*extensions, *sorted(scan.other_types)))
        logger.warning("left out %d audio file(s) of other types (%s) under %s: only %s files are listed; "
                       "pass --ext %s to include them", sum(scan.other_types.values()), types, root,
                       ",".join(extensions), wanted)


def main(root: str, dest: str, ext: str = "wav,flac", valid_percent: float = 0.01, seed: int = 42,
         sample_rate: int = 16000, min_samples: int = 0, skip_bad: bool = False,
         jobs: int = 8) -> Dict[str, object]:
    """Write the manifests (see the module docstring).

    Returns:
        ``{"train": Path, "valid": Path | None, "n_train": int, "n_valid": int,
        "n_bad": int, "n_short": int, "n_duplicates": int, "n_loud": int}``.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"audio root {root} is not a folder")
    if sample_rate < 0:
        raise UserError(f"--sample-rate must be a rate in Hz (or 0 to accept any), got {sample_rate}")
    root_path = root_path.resolve()
    if _name_problem(str(root_path)) is not None:
        raise UserError(f"the audio root {shown_name(str(root_path))} contains a tab or line break or is not UTF-8, "
                        f"which line 1 of a manifest cannot hold: rename the folder")
    extensions = parse_extensions(ext)
    scan = scan_audio(root_path, extensions)
    _log_scan(root_path, scan, extensions)
    rels = scan.files
    if not rels and not scan.bad:
        raise UserError(
            f"no audio files with extension {', '.join(extensions)} under {root_path}: "
            f"check the folder, or pass --ext (e.g. --ext flac)")
    dest_path = check_writable_dir(dest)

    paths = [str(root_path / r) for r in rels]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # soundfile releases the GIL
        results = list(progress(pool.map(lambda p: check_audio(p, sample_rate), paths),
                                total=len(paths), desc="checking audio", unit="file"))

    good: List[Tuple[str, int]] = []
    bad: List[Tuple[str, str]] = list(scan.bad)
    loud: List[Tuple[str, float]] = []
    n_short = 0
    for rel, (n, reason, peak) in zip(rels, results):
        if reason is not None:
            bad.append((rel, reason))
        elif n < min_samples:
            n_short += 1
        else:
            good.append((rel, n))
        if peak is not None:
            loud.append((rel, peak))
    bad.sort()
    n_checked = len(rels) + len(scan.bad)
    if bad:
        listing = _write_bad_list(dest_path, bad)
        if not skip_bad:
            raise UserError(
                f"{len(bad)} of {n_checked} audio files under {root_path} cannot be used "
                f"(full list in {listing}); fix or remove them, or rerun with --skip-bad "
                f"to leave them out:\n{_format_bad(root_path, bad)}")
        logger.warning("leaving out %d bad audio files (listed in %s):\n%s",
                       len(bad), listing, _format_bad(root_path, bad))
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest_path / "bad_files.tsv")
    if loud:
        logger.warning("%d float audio file(s) have samples far outside [-1, 1] (peak above %g); they are "
                       "listed as they are: normalise them if that is not intended:\n%s", len(loud),
                       FAR_OUT_OF_RANGE, _format_bad(root_path, [(r, f"peak {p:.3g}") for r, p in loud]))
    if n_short:
        logger.info("left out %d files shorter than --min-samples %d", n_short, min_samples)
    if not good:
        raise UserError(f"no usable audio files under {root_path} (all bad or shorter than "
                        f"--min-samples {min_samples})")

    is_valid = split_valid(len(good), valid_percent, seed)
    out: Dict[str, object] = {"valid": None, "n_bad": len(bad), "n_short": n_short,
                              "n_duplicates": len(scan.duplicates), "n_loud": len(loud)}
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
