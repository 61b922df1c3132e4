"""Usage: python scripts/probe.py TSV CKPT [--layers all|0,6,12] (--spk-file SPLIT.spk | --speakers uid2spk.tsv)
              [--phones phones.tsv] [--phone-rate 100] [--n-clusters 100] [--kmeans-frames 30000]
              [--speaker-purity] [--test-fraction 0.25] [--seed 0] [--device auto] [--json OUT.json]

Probe the frozen layer features of a HuBERT-family checkpoint (fairseq HuBERT, this package's
disentangled HuBERT, fine-tuned HuBERT-CTC) for speaker and phone information, layer by layer,
to see how well a model separates content from speaker (see fairseq_ext/probe.py).

For every requested layer (1-based as in fairseq; 0 = the transformer's input):
  spk acc   speaker-identification accuracy of a linear classifier (logistic regression) on
            mean-pooled utterance features, trained on ~75% of each speaker's utterances and
            tested on the rest (split fixed by --seed); printed with the chance level
  PNMI, phn pur, cls pur
            with --phones: k-means (--n-clusters) on the layer's frames, then phone-normalised
            mutual information, phone purity and cluster purity as in fairseq's
            measure_teacher_quality.py (model frames repeated to --phone-rate)
  spk pur, spk NMI
            with --speaker-purity: the same k-means codes against the speaker of each frame
            (low = codes carry little speaker identity)

Inputs: TSV is a fairseq manifest (line 1: audio root; then relpath<TAB>n_samples). Speakers
come from --spk-file (one name per manifest line, speaker_labels.py's SPLIT.spk) or
--speakers (uid<TAB>speaker lines, uid = file basename without extension). --phones has lines
uid<TAB>p1,p2,... with one phone per frame at --phone-rate Hz (the demo corpus' phones.tsv).
The table goes to stdout; --json also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

if __name__ == "__main__":  # run from a checkout: use its packages, not a stale installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_ext.base.atomic import atomic_output  # noqa: E402
from fairseq_ext.base.cli import run_cli  # noqa: E402
from fairseq_ext.base.errors import UserError  # noqa: E402
from fairseq_ext.base.manifest import read_audio, read_manifest  # noqa: E402

logger = logging.getLogger("probe")


def parse_layers(spec: str, n_layers: int) -> List[int]:
    """``"all"`` -> 1..n_layers; ``"0,6,12"`` -> [0, 6, 12] (checked against ``n_layers``)."""
    if spec == "all":
        return list(range(1, n_layers + 1))
    try:
        layers = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--layers must be 'all' or comma-separated integers, got {spec!r}") from None
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if not layers or bad:
        raise UserError(f"--layers {spec!r}: the model has layers 1..{n_layers} (0 = transformer input)")
    return layers


def main(tsv: str, ckpt: str, layers: str = "all", spk_file: Optional[str] = None, speakers: Optional[str] = None,
         phones: Optional[str] = None, phone_rate: float = 100.0, n_clusters: int = 100, kmeans_frames: int = 30000,
         speaker_purity: bool = False, test_fraction: float = 0.25, seed: int = 0, device: str = "auto",
         json_path: Optional[str] = None, trust_checkpoint: bool = False) -> dict:
    """Run the probe and print the table; returns the JSON report."""
    import torch

    from fairseq_ext.probe import LayerFeatureExtractor, ProbeOptions, format_table, run_probe
    from fairseq_ext.label_quality import read_phones
    from simple_kmeans.speaker_labels import read_spk_file, speakers_from_table

    if spk_file is None and speakers is None and phones is None:
        raise UserError("nothing to probe: give --spk-file or --speakers, and/or --phones")
    if speaker_purity and spk_file is None and speakers is None:
        raise UserError("--speaker-purity needs --spk-file or --speakers")
    manifest = read_manifest(tsv)
    spk: Optional[List[str]] = None
    if spk_file is not None:
        spk = read_spk_file(spk_file)
        if len(spk) != len(manifest):
            raise UserError(f"{spk_file} has {len(spk)} lines but {tsv} lists {len(manifest)} files")
    elif speakers is not None:
        spk = speakers_from_table(manifest, speakers)
    ref = read_phones(phones) if phones is not None else None

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = LayerFeatureExtractor.from_checkpoint(ckpt, device=device, trusted=trust_checkpoint)
    layer_list = parse_layers(layers, extractor.n_layers)
    stride = 1
    for _, _, s in extractor.conv_layers:
        stride *= s
    sample_rate = 16000
    model_rate = sample_rate / stride
    upsample = phone_rate / model_rate
    if ref is not None and (upsample < 1 or abs(upsample - round(upsample)) > 1e-6):
        raise UserError(f"--phone-rate {phone_rate:g} Hz must be a whole multiple of the model's frame "
                        f"rate ({model_rate:g} Hz)")
    uids = [manifest.uid(e) for e in manifest.entries]

    def extract(i: int):
        e = manifest.entries[i]
        wav = read_audio(manifest.audio_path(e), sample_rate, e.n_samples, where=f"{tsv}:{e.line}")
        return extractor(wav, layer_list)

    options = ProbeOptions(n_clusters=n_clusters, kmeans_frames=kmeans_frames, test_fraction=test_fraction,
                           seed=seed, phone_upsample=int(round(upsample)), speaker_purity=speaker_purity)
    expected = sum(extractor.num_frames(e.n_samples) for e in manifest.entries)
    results = run_probe(uids, extract, layer_list, spk, ref, options, expected_frames=expected)

    first = results[layer_list[0]]
    lines = [f"checkpoint {ckpt}: {extractor.n_layers} layers; {len(uids)} utterances from {tsv}"]
    if "spk_acc" in first:
        lines.append(f"speaker probe: {first['n_speakers']} speakers, {first['n_train']} train / "
                     f"{first['n_test']} test utterances, chance {first['spk_chance']:.4f}")
    if ref is not None or speaker_purity:
        lines.append(f"k-means: {n_clusters} clusters per layer")
    print("\n".join(lines) + "\n" + format_table(results), flush=True)
    report = {
        "checkpoint": str(ckpt), "manifest": str(tsv), "n_utterances": len(uids),
        "options": {"n_clusters": n_clusters, "kmeans_frames": kmeans_frames, "test_fraction": test_fraction,
                    "seed": seed, "phone_rate": phone_rate, "model_frame_rate": model_rate},
        "layers": {str(layer): results[layer] for layer in layer_list},
    }
    if json_path:
        with atomic_output(json_path) as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        logger.info("wrote %s", json_path)
    return report


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv", help="manifest file ({split}.tsv)")
    parser.add_argument("ckpt", help="HuBERT-family checkpoint")
    parser.add_argument("--layers", default="all", help="'all' (default) or comma-separated 1-based layers; 0 = "
                                                        "transformer input")
    parser.add_argument("--spk-file", default=None, help="speaker per manifest line ({split}.spk)")
    parser.add_argument("--speakers", default=None, help="uid<TAB>speaker table")
    parser.add_argument("--phones", default=None, help="frame-level phone references uid<TAB>p1,p2,...")
    parser.add_argument("--phone-rate", type=float, default=100.0, help="frame rate of --phones in Hz (default 100)")
    parser.add_argument("--n-clusters", type=int, default=100, help="k-means clusters per layer (default 100)")
    parser.add_argument("--kmeans-frames", type=int, default=30000,
                        help="frames per layer used to fit k-means (default 30000)")
    parser.add_argument("--speaker-purity", action="store_true", help="also measure speaker purity of the codes")
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="share of each speaker's utterances held out for the speaker probe (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and k-means")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON here")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle everything in the checkpoint (only for files you trust)")
    return parser


def cli(argv=None) -> None:
    run_cli(main, get_parser(), argv)


if __name__ == "__main__":
    cli()
