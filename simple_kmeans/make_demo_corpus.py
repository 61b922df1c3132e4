"""Usage: fairseq-ext-demo-corpus OUT_DIR [--n-speakers 4] [--utts-per-speaker 12] [--seed 0]

Generate a small synthetic multi-speaker speech corpus with known frame-level phone labels.

Each "phone" is synthesised by a source-filter model: vowels and nasals are a glottal pulse
train (speaker- and utterance-dependent F0 contour) through formant resonators; fricatives
are band-pass noise; stops are a closure and a burst; "sil" is near-silence. Speakers differ
in F0, vocal-tract length (formant scale), spectral tilt and loudness, so the corpus carries
both content and speaker identity, which is what the label pipeline, the disentanglement
experiments and the speaker heads need without downloading data.

Writes into OUT_DIR:
  wav/{spk}/{spk}_{i:03d}.wav   16-bit mono audio
  phones.tsv                    uid<TAB>p1,p2,...   frame-level phones at 100 Hz
  speakers.tsv                  uid<TAB>speaker
  f0.tsv                        uid<TAB>f0_1,f0_2,... true F0 at 100 Hz (0 = unvoiced)
Utterance ids are file basenames without extension (fairseq's convention).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from fairseq_ext.base.atomic import atomic_output
from fairseq_ext.base.cli import progress, run_cli
from fairseq_ext.base.errors import UserError

logger = logging.getLogger("make_demo_corpus")

FRAME_RATE = 100  # phone reference frames per second
# phone -> (kind, formants Hz or band edges Hz)
PHONES: Dict[str, Tuple[str, Tuple[float, ...]]] = {
    "aa": ("vowel", (730, 1090, 2440)),
    "iy": ("vowel", (270, 2290, 3010)),
    "uw": ("vowel", (300, 870, 2240)),
    "eh": ("vowel", (530, 1840, 2480)),
    "ao": ("vowel", (570, 840, 2410)),
    "ae": ("vowel", (660, 1720, 2410)),
    "m": ("nasal", (250, 1100, 2200)),
    "n": ("nasal", (250, 1700, 2600)),
    "s": ("fric", (4500, 7500)),
    "sh": ("fric", (2200, 4500)),
    "f": ("fric", (1000, 7800)),
    "t": ("stop", (3000, 6000)),
    "k": ("stop", (1500, 3500)),
    "sil": ("sil", ()),
}


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    b = [1.0 - r]
    return lfilter(b, a, x)


def _bandpass_noise(n: int, lo: float, hi: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    hi = min(hi, 0.45 * sr)
    lo = min(lo, 0.5 * hi)
    sos = butter(4, [lo, hi], btype="band", fs=sr, output="sos")
    return sosfilt(sos, rng.standard_normal(n))


def make_speaker(index: int, rng: np.random.Generator) -> Dict[str, float]:
    """Random speaker traits: F0 (Hz), formant scale, spectral tilt, gain."""
    female = index % 2 == 1
    return {
        "f0": float(rng.uniform(180, 250) if female else rng.uniform(85, 140)),
        "formant_scale": float(rng.uniform(1.08, 1.22) if female else rng.uniform(0.86, 1.0)),
        "tilt": float(rng.uniform(0.90, 0.98)),
        "gain": float(rng.uniform(0.25, 0.45)),
    }


def glottal_source(f0_frames: np.ndarray, tilt: float, sr: int = 16000) -> np.ndarray:
    """Glottal pulse train ``(len(f0_frames) * sr // FRAME_RATE,)`` for an F0 contour at 100 Hz
    (one pulse per period), through a one-pole spectral-tilt filter with coefficient ``tilt``."""
    from scipy.signal import lfilter

    phase = np.cumsum(np.repeat(f0_frames, sr // FRAME_RATE) / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # 1 at each glottal closure
    return lfilter([1.0], [1.0, -tilt], pulses)


def render_phones(
    seq: Sequence[str], durs: Sequence[int], source: np.ndarray, formant_scale: float,
    rng: np.random.Generator, sr: int = 16000, fric_jitter: bool = False, min_burst: int = 0,
    silence_noise: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Render phones ``seq`` of ``durs`` 100 Hz frames each from the glottal ``source``.

    Vowels and nasals: the source through formant resonators (scaled by ``formant_scale``);
    fricatives: band-pass noise (centre jittered by +-5% with ``fric_jitter``); stops: silence
    then a burst of at least ``min_burst`` samples; "sil": faint noise (``silence_noise``) or
    zeros. Each phone gets 5 ms ramps.

    Returns:
        ``(wav (sum(durs) * sr // 100,), voiced (sum(durs),) bool)``.
    """
    hop = sr // FRAME_RATE
    n_frames = sum(durs)
    out = np.zeros(n_frames * hop)
    voiced = np.zeros(n_frames, dtype=bool)
    pos = 0
    for p, d in zip(seq, durs):
        kind, spec = PHONES[p]
        a, b = pos * hop, (pos + d) * hop
        n = b - a
        if kind in ("vowel", "nasal"):
            y = np.zeros(n)
            for k, f in enumerate(spec):
                y += _resonator(source[a:b], f * formant_scale, 60 + 40 * k, sr) / (k + 1)
            if kind == "nasal":
                y *= 0.4
            voiced[pos:pos + d] = True
        elif kind == "fric":
            lo = spec[0] * rng.uniform(0.95, 1.05) if fric_jitter else spec[0]
            y = 0.3 * _bandpass_noise(n, lo, spec[1], sr, rng)
        elif kind == "stop":
            y = np.zeros(n)
            burst = max(n // 3, min_burst)
            y[n - burst:] = 0.6 * _bandpass_noise(burst, spec[0], spec[1], sr, rng) * np.hanning(burst)
        else:
            y = 0.002 * rng.standard_normal(n) if silence_noise else np.zeros(n)
        ramp = min(80, n // 4)
        if ramp:
            y[:ramp] *= np.linspace(0, 1, ramp)
            y[-ramp:] *= np.linspace(1, 0, ramp)
        out[a:b] = y
        pos += d
    return out, voiced


def synth_utterance(
    speaker: Dict[str, float], rng: np.random.Generator, sr: int = 16000,
    n_phones: Tuple[int, int] = (8, 18), pitch_shift: float = 1.0,
) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """Synthesise one utterance.

    Returns:
        ``(wav, phones, f0)``: waveform ``(T,)`` float32 in [-1, 1], frame-level phone labels
        (100 Hz, ``len == T // (sr // 100)``) and true F0 per frame (0 where unvoiced).
    """
    names = [p for p in PHONES if p != "sil"]
    seq = ["sil"] + list(rng.choice(names, size=int(rng.integers(*n_phones)))) + ["sil"]
    durs = [int(rng.integers(8, 20)) if PHONES[p][0] in ("vowel", "sil") else int(rng.integers(5, 12))
            for p in seq]
    n_frames = sum(durs)
    # F0 contour: declination + slow wobble, per utterance pitch shift
    t = np.arange(n_frames) / FRAME_RATE
    f0_frames = speaker["f0"] * pitch_shift * (1.1 - 0.2 * t / max(t[-1], 1e-3)) * (
        1 + 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6)))
    source = glottal_source(f0_frames, speaker["tilt"], sr)
    out, voiced = render_phones(seq, durs, source, speaker["formant_scale"], rng, sr)
    labels = [p for p, d in zip(seq, durs) for _ in range(d)]
    out = out / (np.abs(out).max() + 1e-9) * speaker["gain"]
    out += 1e-3 * rng.standard_normal(len(out))
    f0 = np.where(voiced, f0_frames, 0.0)
    return out.astype(np.float32), labels, f0


def main(out_dir: str, n_speakers: int = 4, utts_per_speaker: int = 12, seed: int = 0,
         sample_rate: int = 16000, pitch_shifts: bool = True) -> Path:
    """Write the corpus (see the module docstring); returns ``out_dir``."""
    import soundfile as sf

    if n_speakers < 1 or utts_per_speaker < 1:
        raise UserError("--n-speakers and --utts-per-speaker must be >= 1")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    speakers = [make_speaker(i, rng) for i in range(n_speakers)]
    phone_lines, spk_lines, f0_lines = [], [], []
    jobs = [(s, i) for s in range(n_speakers) for i in range(utts_per_speaker)]
    for s, i in progress(jobs, desc="synthesising", unit="utt"):
        spk = f"spk{s:02d}"
        shift = float(rng.choice([0.85, 1.0, 1.18])) if pitch_shifts else 1.0
        wav, labels, f0 = synth_utterance(speakers[s], rng, sample_rate, pitch_shift=shift)
        uid = f"{spk}_{i:03d}"
        path = out / "wav" / spk / f"{uid}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.wav")
        sf.write(tmp, wav, sample_rate, subtype="PCM_16")
        os.replace(tmp, path)
        phone_lines.append(f"{uid}\t{','.join(labels)}\n")
        spk_lines.append(f"{uid}\t{spk}\n")
        f0_lines.append(f"{uid}\t{','.join(f'{v:.1f}' for v in f0)}\n")
    for name, lines in (("phones.tsv", phone_lines), ("speakers.tsv", spk_lines), ("f0.tsv", f0_lines)):
        with atomic_output(out / name) as f:
            f.writelines(lines)
    logger.info("wrote %d utterances of %d speakers to %s", len(jobs), n_speakers, out)
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--n-speakers", type=int, default=4, help="number of speakers")
    parser.add_argument("--utts-per-speaker", type=int, default=12, help="utterances per speaker")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the corpus is deterministic)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate in Hz")
    parser.add_argument("--no-pitch-shifts", dest="pitch_shifts", action="store_false",
                        help="do not apply random per-utterance pitch shifts")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
