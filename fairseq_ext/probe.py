"""Probing frozen layer features: what speaker and phone information each layer carries.

Measures used to judge disentanglement (scripts/probe.py is the command line):

* speaker identification: each utterance's features are mean-pooled over time, standardised,
  and a multinomial logistic regression is trained on part of every speaker's utterances and
  tested on the rest (a deterministic split per seed). Reported with the chance level, the
  accuracy of always answering the most frequent training speaker.
* phone information of k-means codes: k-means (K clusters, k-means++ seeding, faiss Lloyd
  iterations, as the label pipeline) on frames of the layer, then PNMI, phone purity and
  cluster purity against frame-level phone references, with the definitions of fairseq's
  ``measure_teacher_quality.py`` (``simple_kmeans.measure_quality``).
* speaker purity of the codes: the same numbers with the frame's speaker as the reference
  (``spk_purity`` = sum over codes of the largest speaker share; ``spk_nmi`` = MI / H(speaker)).

All layers come out of one forward pass per utterance: the transformer encoder's per-layer
results are captured with hooks. Layer L (1-based) is what ``model.extract_features(wav,
output_layer=L)`` returns; layer 0 is the transformer's input (projected CNN features).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fairseq_ext.base.cli import progress
from fairseq_ext.base.errors import UserError

logger = logging.getLogger(__name__)

FeatureFn = Callable[[int], Dict[int, np.ndarray]]
"""``extract(i)`` -> ``{layer: (T, C) float32}`` for utterance ``i``."""


# --------------------------------------------------------------------------- features


class LayerFeatureExtractor:
    """Features of every transformer layer of a HuBERT-family model in one forward pass.

    Args:
        model: a fairseq ``HubertModel`` or subclass (a fine-tuned ``HubertCtc`` is unwrapped).
        normalize: layer-normalise the waveform first (the task's ``normalize``).
    """

    def __init__(self, model: torch.nn.Module, normalize: bool = False):
        if hasattr(model, "w2v_encoder"):  # fine-tuned HubertCtc / HubertSeq2Seq
            model = model.w2v_encoder.w2v_model
        if not hasattr(model, "encoder") or not hasattr(model.encoder, "layers"):
            raise UserError(f"{type(model).__name__} is not a HuBERT-family model (no encoder.layers)")
        self.model = model.eval()
        self.normalize = normalize
        self.device = next(model.parameters()).device
        self.n_layers = len(model.encoder.layers)
        self.conv_layers: List[Tuple[int, int, int]] = [
            (m.out_channels, m.kernel_size[0], m.stride[0])
            for m in model.feature_extractor.modules() if isinstance(m, torch.nn.Conv1d)
        ]

    @classmethod
    def from_checkpoint(cls, ckpt_path: str, device: str = "cpu", trusted: bool = False) -> "LayerFeatureExtractor":
        """Load ``ckpt_path`` with :func:`fairseq_ext.load_model`."""
        from fairseq_ext.checkpoint import CheckpointError, load_model

        try:
            model, _, task = load_model(ckpt_path, device=device, trusted=trusted)
        except (FileNotFoundError, CheckpointError) as e:
            raise UserError(str(e)) from None
        return cls(model, bool(getattr(task.cfg, "normalize", False)))

    def num_frames(self, n_samples: int) -> int:
        """Frames the CNN makes of ``n_samples`` samples."""
        length = n_samples
        for _, kernel, stride in self.conv_layers:
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    @torch.no_grad()
    def __call__(self, wav: np.ndarray, layers: Sequence[int]) -> Dict[int, np.ndarray]:
        """``wav`` (S,) float waveform -> ``{layer: (T, C) float32}`` for the requested layers."""
        for layer in layers:
            if not 0 <= layer <= self.n_layers:
                raise UserError(f"layer {layer} is out of range: the model has {self.n_layers} layers "
                                f"(0 = transformer input)")
        if self.num_frames(len(wav)) == 0:  # shorter than the CNN's receptive field
            dim = self.model.encoder.embedding_dim
            return {layer: np.zeros((0, dim), dtype=np.float32) for layer in layers}
        source = torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self.device)
        if self.normalize:
            source = F.layer_norm(source, source.shape)
        captured: Dict[str, object] = {}

        def before(module, args, kwargs):
            captured["input"] = args[0] if args else kwargs["x"]  # (B, T, C)

        def after(module, args, output):
            captured["layers"] = output[1]  # per layer (x (T, B, C), attn, ffn-residual)

        encoder = self.model.encoder
        hooks = [encoder.register_forward_pre_hook(before, with_kwargs=True), encoder.register_forward_hook(after)]
        try:
            self.model.extract_features(source[None], padding_mask=None, mask=False)
        finally:
            for h in hooks:
                h.remove()
        results = captured.get("layers")
        if not isinstance(results, list) or len(results) != self.n_layers:
            raise UserError(f"{type(self.model).__name__}'s encoder did not return one result per layer; "
                            f"this model cannot be probed")
        out = {}
        for layer in layers:
            x = captured["input"][0] if layer == 0 else results[layer - 1][0][:, 0]
            out[layer] = x.float().cpu().numpy()
        return out


# --------------------------------------------------------------------------- speaker identification


def speaker_split(speakers: Sequence[str], test_fraction: float = 0.25, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic per-speaker train/test split of utterance indices.

    Each speaker with at least two utterances gives ``max(1, round(test_fraction * n))`` of them
    (at most ``n - 1``) to the test set; speakers with one utterance are training-only.
    Returns ``(train_idx, test_idx)``, sorted.
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    names = np.asarray(speakers)
    train, test = [], []
    for name in sorted(set(speakers)):
        idx = np.flatnonzero(names == name)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(len(idx) - 1, max(1, round(test_fraction * len(idx)))) if len(idx) > 1 else 0
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def speaker_id_probe(feats: np.ndarray, speakers: Sequence[str], train_idx: np.ndarray, test_idx: np.ndarray,
                     seed: int = 0, c: float = 1.0) -> Dict[str, float]:
    """Train a linear speaker classifier on utterance vectors and test it.

    Args:
        feats: (N, C) one vector per utterance (e.g. mean-pooled layer features).
        speakers: N speaker names.
        train_idx, test_idx: utterance indices (see :func:`speaker_split`).
        c: inverse L2 regularisation strength of the logistic regression.
    Returns:
        ``{"spk_acc", "spk_chance", "n_train", "n_test", "n_speakers"}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = np.asarray(speakers)
    if len(test_idx) == 0 or len(set(names[train_idx])) < 2:
        raise UserError("the speaker probe needs at least 2 speakers with 2 or more utterances each")
    x = np.asarray(feats, dtype=np.float64)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(x[train_idx], names[train_idx])
    acc = float((clf.predict(x[test_idx]) == names[test_idx]).mean())
    train_names, counts = np.unique(names[train_idx], return_counts=True)
    majority = train_names[np.argmax(counts)]
    return {
        "spk_acc": acc,
        "spk_chance": float((names[test_idx] == majority).mean()),
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "n_speakers": int(len(train_names)),
    }


# --------------------------------------------------------------------------- k-means codes


def fit_codebook(frames: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means centers (K, C) of ``frames`` (N, C), as the label pipeline learns them."""
    from fairseq_ext.kmeans.backends import fit_faiss

    if len(frames) < n_clusters:
        raise UserError(f"k-means with {n_clusters} clusters needs at least that many frames, got "
                        f"{len(frames)}: lower --n-clusters or probe more audio")
    km, _ = fit_faiss(np.ascontiguousarray(frames, dtype=np.float32), n_clusters, seed=seed)
    return np.asarray(km.cluster_centers_, dtype=np.float32)


def assign_codes(frames: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center for each frame: (N, C), (K, C) -> (N,) int64."""
    import faiss

    if len(frames) == 0:
        return np.zeros(0, dtype=np.int64)
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(frames, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def code_metrics(codes: Dict[str, np.ndarray], phones: Optional[Dict[str, Sequence[str]]],
                 frame_speakers: Optional[Dict[str, str]], phone_upsample: int = 2) -> Dict[str, float]:
    """PNMI / purities of ``{uid: codes}`` against phones and speakers (whichever is given).

    Codes are repeated ``phone_upsample`` times to the phone frame rate (fairseq's ``--upsample``)
    and both sequences cropped to the shorter, as ``measure_teacher_quality.py`` does.
    """
    from fairseq_ext.label_quality import pad_and_upsample, quality_metrics

    out: Dict[str, float] = {}
    if phones is not None:
        hyps = {u: pad_and_upsample(c, 0, phone_upsample) for u, c in codes.items() if u in phones}
        if not hyps:
            raise UserError("no probed utterance has phone references: check that the uids in --phones "
                            "are the audio file basenames without extension")
        if len(hyps) < len(codes):
            logger.warning("%d of %d probed utterances have no phone reference; PNMI uses the other %d",
                           len(codes) - len(hyps), len(codes), len(hyps))
        m = quality_metrics({u: phones[u] for u in hyps}, hyps)
        out.update(pnmi=float(m["MI/H(ref)"]), phone_purity=float(m["ref pur"]),
                   cluster_purity=float(m["hyp pur"]))
    if frame_speakers is not None:
        refs = {u: np.full(len(c), frame_speakers[u], dtype=object) for u, c in codes.items() if len(c)}
        m = quality_metrics(refs, {u: codes[u] for u in refs})
        out.update(spk_purity=float(m["ref pur"]), spk_nmi=float(m["MI/H(ref)"]))
    return out


# --------------------------------------------------------------------------- driver


@dataclass
class ProbeOptions:
    """Settings of :func:`run_probe`."""

    n_clusters: int = 100
    kmeans_frames: int = 30000  # frames per layer kept to fit k-means (memory: frames x dim x 2 bytes x layers)
    test_fraction: float = 0.25
    seed: int = 0
    phone_upsample: int = 2
    speaker_purity: bool = False
    c: float = 1.0


def run_probe(uids: Sequence[str], extract: FeatureFn, layers: Sequence[int],
              speakers: Optional[Sequence[str]] = None, phones: Optional[Dict[str, Sequence[str]]] = None,
              options: Optional[ProbeOptions] = None, expected_frames: Optional[int] = None) -> Dict[int, Dict[str, float]]:
    """Probe every layer of ``extract``'s features.

    Args:
        uids: utterance ids, index-aligned with ``extract`` and ``speakers``.
        extract: ``extract(i)`` -> ``{layer: (T, C)}`` for every layer in ``layers``.
        speakers: speaker per utterance (enables the speaker probe / speaker purity).
        phones: ``{uid: frame-level phones}`` (enables PNMI and purities).
        expected_frames: estimated total frames (to sample k-means frames in one pass);
            when all frames fit in ``options.kmeans_frames`` codes come from the kept frames,
            otherwise the features are extracted a second time to assign codes.
    Returns:
        ``{layer: {metric: value}}``.
    """
    opt = options or ProbeOptions()
    use_kmeans = phones is not None or (opt.speaker_purity and speakers is not None)
    n = len(uids)
    if speakers is not None and len(speakers) != n:
        raise UserError(f"{len(speakers)} speaker labels for {n} utterances")
    rng = np.random.default_rng(opt.seed)
    keep_p = 1.0
    if use_kmeans and expected_frames:
        keep_p = min(1.0, opt.kmeans_frames / max(expected_frames, 1))
    pooled: Dict[int, List[np.ndarray]] = {layer: [] for layer in layers}
    kept: Dict[int, List[np.ndarray]] = {layer: [] for layer in layers}
    all_kept = keep_p >= 1.0
    lengths: List[int] = []
    for i in progress(range(n), desc="probe: features", unit="utt"):
        feats = extract(i)
        length = len(next(iter(feats.values())))
        lengths.append(length)
        mask = rng.random(length) < keep_p if not all_kept else None
        for layer in layers:
            x = feats[layer]
            pooled[layer].append(x.mean(axis=0, dtype=np.float64) if length else np.zeros(x.shape[1]))
            if use_kmeans:
                kept[layer].append((x if all_kept else x[mask]).astype(np.float16))
    results: Dict[int, Dict[str, float]] = {layer: {} for layer in layers}
    if speakers is not None:
        train_idx, test_idx = speaker_split(speakers, opt.test_fraction, opt.seed)
        for layer in layers:
            results[layer].update(speaker_id_probe(np.stack(pooled[layer]), speakers, train_idx, test_idx,
                                                   opt.seed, opt.c))
    if not use_kmeans:
        return results
    centers = {}
    for layer in layers:
        frames = np.concatenate(kept[layer]).astype(np.float32)
        logger.info("layer %d: k-means, %d clusters on %d frames", layer, opt.n_clusters, len(frames))
        centers[layer] = fit_codebook(frames, opt.n_clusters, opt.seed)
    codes: Dict[int, Dict[str, np.ndarray]] = {layer: {} for layer in layers}
    if all_kept:
        for layer in layers:
            for uid, x in zip(uids, kept[layer]):
                codes[layer][uid] = assign_codes(x, centers[layer])
    else:
        kept.clear()
        for i in progress(range(n), desc="probe: codes", unit="utt"):
            feats = extract(i)
            for layer in layers:
                codes[layer][uids[i]] = assign_codes(feats[layer], centers[layer])
    frame_speakers = dict(zip(uids, speakers)) if (opt.speaker_purity and speakers is not None) else None
    for layer in layers:
        results[layer].update(code_metrics(codes[layer], phones, frame_speakers, opt.phone_upsample))
    return results


COLUMNS = [("spk_acc", "spk acc"), ("pnmi", "PNMI"), ("phone_purity", "phn pur"),
           ("cluster_purity", "cls pur"), ("spk_purity", "spk pur"), ("spk_nmi", "spk NMI")]


def format_table(results: Dict[int, Dict[str, float]]) -> str:
    """A per-layer text table of the metrics present in ``results``."""
    present = [(k, title) for k, title in COLUMNS if any(k in r for r in results.values())]
    header = "layer " + " ".join(f"{title:>8}" for _, title in present)
    lines = [header, "-" * len(header)]
    for layer in sorted(results):
        r = results[layer]
        cells = [f"{r[k]:8.4f}" if k in r and not math.isnan(r[k]) else f"{'-':>8}" for k, _ in present]
        lines.append(f"{layer:>5} " + " ".join(cells))
    return "\n".join(lines)
