"""Synthetic keyword-spotting corpus in the Speech Commands layout (for the front-end sweep,
settings A-D in docs/speaker.md, without downloading data); ``scripts/make_kws_corpus.py`` is its
command line.

Each keyword is a fixed phone sequence (from the phone inventory of
simple_kmeans.make_demo_corpus, synthesised with its source-filter model: glottal pulses through
formant resonators for vowels and nasals, band-pass noise for fricatives, closure + burst for
stops). The keywords come in confusable groups (sea/she/fee/knee/me differ in one consonant,
moon/noon in the nasal, cat/cot in the vowel), so the task depends on spectral detail. Every
clip is spoken by a generated voice (F0, vocal-tract length, spectral tilt, loudness as in the
demo corpus) with a random pitch shift (x0.85..1.18), tempo (x0.8..1.25, plus +-20% per phone),
formant jitter, onset position, and additive coloured noise at a random SNR, in a clip of
``duration`` seconds.

:func:`main` writes into ``out_dir``:
  {keyword}/{voice}_nohash_{take}.wav   16-bit mono clips (one folder per class)
  validation_list.txt, testing_list.txt  relative paths of the clips of the last
                                         valid_voices + test_voices voices (speaker-disjoint
                                         splits; the rest is training data)
  keywords.txt                           keyword<TAB>phones (not .tsv: a .tsv in the root would make
                                         the task read the folder as a manifest folder)
  corpus.json                            the settings and counts

The corpus is deterministic: clip (voice v, keyword k, take t) depends only on (seed, v, k, t),
so a larger ``voices`` adds voices without changing the existing ones. A rerun with the same
settings whose files are all present does nothing; otherwise every clip is rewritten (to a
temporary name, then renamed) and clips of an earlier, larger corpus are removed.
"""


from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError
from simple_kmeans.make_demo_corpus import FRAME_RATE, PHONES, glottal_source, make_speaker, render_phones

logger = logging.getLogger("make_kws_corpus")

KEYWORDS: List[Tuple[str, Tuple[str, ...]]] = [
    ("sea", ("s", "iy")),
    ("she", ("sh", "iy")),
    ("fee", ("f", "iy")),
    ("knee", ("n", "iy")),
    ("me", ("m", "iy")),
    ("moon", ("m", "uw", "n")),
    ("noon", ("n", "uw", "n")),
    ("cat", ("k", "ae", "t")),
    ("cot", ("k", "aa", "t")),
    ("test", ("t", "eh", "s", "t")),
]
"""Keyword name and phone sequence, in class order."""

BASE_FRAMES = {"vowel": 15, "nasal": 8, "fric": 10, "stop": 7}
"""Phone durations at tempo 1, in 100 Hz frames."""

SETTINGS_VERSION = 1


def synth_word(
    phones: Sequence[str], voice: Dict[str, float], rng: np.random.Generator, sr: int = 16000,
    duration: float = 1.0, pitch_shift: float = 1.0, tempo: float = 1.0, snr_db: float = 20.0,
) -> np.ndarray:
    """One keyword clip: ``(round(duration * sr),)`` float32 in [-1, 1].

    Args:
        phones: the keyword's phone sequence (keys of ``make_demo_corpus.PHONES``).
        voice: speaker traits from ``make_demo_corpus.make_speaker``.
        rng: source of every random choice of this clip.
        pitch_shift, tempo: F0 factor and duration factor (> 1 = slower).
        snr_db: signal-to-noise ratio of the added noise over the word's active part.
    """
    hop = sr // FRAME_RATE
    n_clip = int(round(duration * sr))
    durs = [max(3, int(round(BASE_FRAMES[PHONES[p][0]] * tempo * rng.uniform(0.8, 1.2)))) for p in phones]
    while sum(durs) * hop > 0.9 * n_clip:  # keep the word inside the clip
        durs = [max(2, d - 1) for d in durs]
    n_frames = sum(durs)
    t = np.arange(n_frames) / FRAME_RATE
    f0 = voice["f0"] * pitch_shift * (1.05 - 0.15 * t / max(t[-1], 1e-3)) * (
        1 + 0.04 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)))
    source = glottal_source(f0, voice["tilt"], sr)
    formant_scale = voice["formant_scale"] * rng.uniform(0.97, 1.03)
    word, _ = render_phones(phones, durs, source, formant_scale, rng, sr, fric_jitter=True, min_burst=8,
                            silence_noise=False)
    word = word / (np.abs(word).max() + 1e-9) * voice["gain"] * rng.uniform(0.6, 1.0)
    clip = np.zeros(n_clip)
    start = int(rng.integers(0, n_clip - len(word) + 1))
    clip[start:start + len(word)] = word
    # coloured noise (random one-pole low-pass of white noise) at the requested SNR
    from scipy.signal import lfilter

    noise = lfilter([1.0], [1.0, -rng.uniform(0.0, 0.9)], rng.standard_normal(n_clip))
    p_word = float(np.mean(word ** 2))
    noise *= np.sqrt(p_word / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    clip += noise
    peak = np.abs(clip).max()
    if peak > 0.99:
        clip *= 0.99 / peak
    return clip.astype(np.float32)


def clip_params(seed: int, voice: int, keyword: int, take: int, snr_db: Tuple[float, float]) -> Dict:
    """The clip's random generator and its pitch shift, tempo and SNR (deterministic)."""
    rng = np.random.default_rng([seed, 1, voice, keyword, take])
    return {"rng": rng, "pitch_shift": float(rng.uniform(0.85, 1.18)), "tempo": float(rng.uniform(0.8, 1.25)),
            "snr_db": float(rng.uniform(*snr_db))}


def make_voice(seed: int, voice: int) -> Dict[str, float]:
    """Traits of voice ``voice`` (alternating male/female ranges, as in the demo corpus)."""
    return make_speaker(voice, np.random.default_rng([seed, 0, voice]))


def parse_snr_range(text: str) -> Tuple[float, float]:
    """``"LOW,HIGH"`` in dB -> ``(low, high)``; a single number gives ``(x, x)``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    try:
        lo, hi = (float(parts[0]), float(parts[-1]))
    except (ValueError, IndexError):
        raise UserError(f"--snr-db {text!r}: give LOW,HIGH in dB, e.g. 5,25") from None
    if lo > hi:
        raise UserError(f"--snr-db {text!r}: LOW must not exceed HIGH")
    return lo, hi


def main(out_dir: str, keywords: int = 10, voices: int = 128, takes: int = 2, valid_voices: int = 16,
         test_voices: int = 16, seed: int = 0, snr_db: str = "5,25", duration: float = 1.0,
         sample_rate: int = 16000, force: bool = False) -> Path:
    """Write the corpus (see the module docstring); returns ``out_dir`` as a :class:`~pathlib.Path`.

    Args:
        out_dir: output folder (one sub-folder per keyword).
        keywords: number of keywords, the first ``keywords`` of :data:`KEYWORDS` (2..10).
        voices: generated voices; the last ``valid_voices + test_voices`` form the validation and test lists.
        takes: clips per voice and keyword.
        seed: random seed (the corpus is deterministic).
        snr_db: SNR range of the added noise in dB, ``"LOW,HIGH"``.
        duration: clip length in seconds (>= 0.5).
        sample_rate: sample rate in Hz.
        force: rewrite the corpus even if it is complete.
    Raises:
        UserError: on settings that leave no training voice or are out of range.
    """
    import soundfile as sf

    if not 2 <= keywords <= len(KEYWORDS):
        raise UserError(f"--keywords must be in 2..{len(KEYWORDS)}, got {keywords}")
    if takes < 1 or valid_voices < 0 or test_voices < 0:
        raise UserError("--takes must be >= 1, --valid-voices and --test-voices >= 0")
    n_train = voices - valid_voices - test_voices
    if n_train < 1:
        raise UserError(f"--voices {voices} leaves no training voice after {valid_voices} validation and "
                        f"{test_voices} test voices")
    if duration < 0.5:
        raise UserError(f"--duration {duration}: clips must be at least 0.5 s long")
    snr = parse_snr_range(snr_db)
    out = Path(out_dir)
    words = KEYWORDS[:keywords]
    settings = {"version": SETTINGS_VERSION, "keywords": [w for w, _ in words], "voices": voices, "takes": takes,
                "valid_voices": valid_voices, "test_voices": test_voices, "seed": seed, "snr_db": list(snr),
                "duration": duration, "sample_rate": sample_rate}
    files = [(v, k, t, f"{w}/v{v:03d}_nohash_{t}.wav")
             for k, (w, _) in enumerate(words) for v in range(voices) for t in range(takes)]
    meta_path = out / "corpus.json"
    if not force and meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text()).get("settings")
        except ValueError:
            old = None
        if old == settings and all((out / rel).is_file() for *_, rel in files):
            logger.info("%s already holds this corpus (%d clips); nothing to do", out, len(files))
            return out
    meta_path.unlink(missing_ok=True)  # the corpus is incomplete until corpus.json is back
    voice_traits = [make_voice(seed, v) for v in range(voices)]
    for v, k, t, rel in progress(files, desc="synthesising", unit="clip"):
        prm = clip_params(seed, v, k, t, snr)
        wav = synth_word(words[k][1], voice_traits[v], prm["rng"], sample_rate, duration, prm["pitch_shift"],
                         prm["tempo"], prm["snr_db"])
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # not *.wav: never picked up as a clip
        sf.write(tmp, wav, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    wanted = {rel for *_, rel in files}
    for w, _ in words:  # clips of an earlier, larger corpus
        for stale in sorted((out / w).glob("*.wav")):
            if f"{w}/{stale.name}" not in wanted:
                logger.info("removing %s (not part of this corpus)", stale)
                stale.unlink()
    extra = sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(("_", "."))
                   and d.name not in settings["keywords"])
    if extra:
        logger.warning("%s holds other class folders %s: the task will read them as classes too", out, extra)
    split_of = {v: "train" if v < n_train else "valid" if v < n_train + valid_voices else "test"
                for v in range(voices)}
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        with atomic_output(out / name) as f:
            f.writelines(f"{rel}\n" for v, _, _, rel in files if split_of[v] == split)
    with atomic_output(out / "keywords.txt") as f:
        f.writelines(f"{w}\t{','.join(ph)}\n" for w, ph in words)
    counts = {s: sum(1 for v, *_ in files if split_of[v] == s) for s in ("train", "valid", "test")}
    with atomic_output(meta_path) as f:
        json.dump({"settings": settings, "clips": counts}, f, indent=1)
    logger.info("wrote %d clips (%d keywords x %d voices x %d takes; train/valid/test clips %d/%d/%d) to %s",
                len(files), keywords, voices, takes, counts["train"], counts["valid"], counts["test"], out)
    return out
