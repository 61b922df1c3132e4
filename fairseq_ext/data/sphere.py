"""NIST SPHERE audio (TIMIT's ``.WAV`` files): header parsing and 16-bit PCM reading.

A SPHERE file starts with ``NIST_1A``, then a line with the header size in bytes (1024 for TIMIT),
then ``name -type value`` lines (``-i`` integer, ``-r`` real, ``-sN`` string of N characters) up to
``end_head``; the samples follow the header. Only uncompressed 16-bit mono PCM is read here (what
TIMIT ships); a shorten-compressed file needs ``sph2pipe -f wav`` first.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple, Union

import numpy as np

from fairseq_ext.base.errors import UserError

MAGIC = b"NIST_1A"

HeaderValue = Union[int, float, str]


def is_sphere(path: os.PathLike | str) -> bool:
    """Whether ``path`` starts with the SPHERE magic ``NIST_1A``."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_sphere_header(path: os.PathLike | str) -> Tuple[Dict[str, HeaderValue], int]:
    """The header fields of a SPHERE file and the header size in bytes (where the samples start).

    Raises:
        UserError: not a SPHERE file, or a header line that cannot be parsed (naming file and line).
    """
    with open(path, "rb") as f:
        head = f.read(1024)
        lines = head.split(b"\n")
        if len(lines) < 2 or lines[0].strip() != MAGIC:
            raise UserError(f"{path}: not a NIST SPHERE file (it does not start with NIST_1A)")
        try:
            size = int(lines[1])
        except ValueError:
            raise UserError(f"{path}:2: SPHERE header size {lines[1][:20]!r} is not an integer") from None
        if size > len(head):
            f.seek(0)
            head = f.read(size)
    if len(head) < size:
        raise UserError(f"{path}: file ends inside its {size}-byte SPHERE header")
    fields: Dict[str, HeaderValue] = {}
    for i, raw in enumerate(head[:size].split(b"\n")[2:], start=3):
        text = raw.decode("ascii", errors="replace").strip()
        if text == "end_head":
            return fields, size
        if not text or text.startswith(";"):
            continue
        parts = text.split(None, 2)
        if len(parts) < 3 or not parts[1].startswith("-"):
            raise UserError(f"{path}:{i}: SPHERE header line {text!r} is not 'name -type value'")
        name, kind, value = parts
        try:
            fields[name] = int(value) if kind == "-i" else float(value) if kind == "-r" else value
        except ValueError:
            raise UserError(f"{path}:{i}: SPHERE header value {value!r} does not match its type {kind}") from None
    raise UserError(f"{path}: SPHERE header has no end_head line within its {size} bytes")


def read_sphere(path: os.PathLike | str) -> Tuple[np.ndarray, int]:
    """Read a 16-bit mono PCM SPHERE file.

    Returns:
        ``(samples, sample_rate)``: int16 samples of shape ``(S,)``.
    Raises:
        UserError: compressed or non-16-bit/mono audio, or a file shorter than its ``sample_count``.
    """
    fields, size = read_sphere_header(path)
    coding = str(fields.get("sample_coding", "pcm"))
    if coding != "pcm":
        raise UserError(f"{path}: SPHERE sample_coding {coding!r} is not plain PCM; decompress it first "
                        f"(sph2pipe -f wav {path} out.wav)")
    if fields.get("channel_count", 1) != 1:
        raise UserError(f"{path}: {fields['channel_count']} channels; only mono SPHERE audio is supported")
    if fields.get("sample_n_bytes", 2) != 2:
        raise UserError(f"{path}: {fields['sample_n_bytes']}-byte samples; only 16-bit SPHERE audio is supported")
    if "sample_rate" not in fields:
        raise UserError(f"{path}: SPHERE header has no sample_rate")
    order = str(fields.get("sample_byte_format", "01"))
    if order not in ("01", "10"):
        raise UserError(f"{path}: SPHERE sample_byte_format {order!r} is neither 01 (little) nor 10 (big endian)")
    with open(path, "rb") as f:
        f.seek(size)
        data = f.read()
    n = len(data) // 2
    expected = fields.get("sample_count")
    if isinstance(expected, int):
        if n < expected:
            raise UserError(f"{path}: SPHERE header says {expected} samples but the file holds only {n}; "
                            f"the file is truncated")
        n = expected
    samples = np.frombuffer(data[: 2 * n], dtype="<i2" if order == "01" else ">i2").astype(np.int16)
    return samples, int(fields["sample_rate"])


__all__ = ["is_sphere", "read_sphere", "read_sphere_header"]
