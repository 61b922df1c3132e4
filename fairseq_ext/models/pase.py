"""fairseq model ``pase``: the PASE / PASE+ encoder together with its workers.

The model computes each worker's target from the input chunk, its prediction and its loss in
``forward`` (so that distributed training sees every parameter inside one forward call); the
``pase`` criterion weights and logs them. Encoder parameters carry ``param_group = "encoder"``
and worker parameters ``param_group = "workers"``, which fairseq's ``composite`` optimizer uses
to give them separate learning rates and schedules.
"""


import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import II, DictConfig, OmegaConf

from fairseq_ext.modules.pase_encoder import PaseEncoder
from fairseq_ext.modules.pase_workers import build_worker, import_worker_file, known_workers
from fairseq_ext.modules.pase_workers.base import PaseBatch, PaseWorker, RegressorWorker
from fairseq_ext.pase_stats import load_target_stats

logger = logging.getLogger(__name__)


@dataclass
class PaseConfig(FairseqDataclass):
    sinc_filters: int = field(default=64, metadata={"help": "SincNet band-pass filters"})
    sinc_kernel_size: int = field(default=251, metadata={"help": "SincNet filter length (odd)"})
    sinc_min_low_hz: float = field(default=50.0, metadata={"help": "lowest allowed SincNet lower cut-off (Hz)"})
    sinc_min_band_hz: float = field(default=50.0, metadata={"help": "smallest allowed SincNet bandwidth (Hz)"})
    conv_channels: List[int] = field(default_factory=lambda: [64, 128, 128, 256, 256, 512, 512],
                                     metadata={"help": "channels of the conv blocks after SincNet"})
    conv_kernel_sizes: List[int] = field(default_factory=lambda: [20, 11, 11, 11, 11, 11, 11],
                                         metadata={"help": "kernel sizes of the conv blocks"})
    conv_strides: List[int] = field(default_factory=lambda: [10, 2, 1, 2, 1, 2, 2],
                                    metadata={"help": "strides of the conv blocks (product = samples per frame)"})
    emb_dim: int = field(default=100, metadata={"help": "embedding size (PASE 100, PASE+ 256)"})
    rnn_type: ChoiceEnum(["none", "lstm", "gru"]) = field(
        default="none", metadata={"help": "recurrent layer before the output projection (PASE+)"})
    rnn_hidden_dim: int = field(default=512, metadata={"help": "hidden units of the recurrent layer"})
    rnn_layers: int = field(default=1, metadata={"help": "recurrent layers"})
    rnn_bidirectional: bool = field(default=False, metadata={"help": "bidirectional recurrent layer"})
    dense_skips: bool = field(default=False, metadata={"help": "PASE+ dense skip connections into the output"})
    # Optional/None rather than an empty dict: fairseq's checkpoint loading (merge_with_parent with
    # remove_missing) would otherwise drop every entry not present in the default dict.
    workers: Optional[Dict[str, Any]] = field(
        default=None,
        metadata={"help": "worker name -> options (weight, hidden_dim, worker-specific keys; 'type' to "
                          "reuse a registered worker under another name); a null entry disables a worker"})
    worker_files: List[str] = field(
        default_factory=list, metadata={"help": "Python files to import that register extra workers"})
    target_stats: Optional[str] = field(
        default=None, metadata={"help": "JSON of target normalisation statistics from scripts/pase_stats.py; "
                                        "unset: running statistics over the first training batches"})
    running_stats_batches: int = field(
        default=200, metadata={"help": "without target_stats: training batches that update the running "
                                       "normalisation statistics (then they stay fixed)"})
    sample_rate: int = II("task.sample_rate")


def encoder_from_cfg(cfg: Any) -> PaseEncoder:
    """Build the :class:`PaseEncoder` described by a ``pase`` model config (dataclass or dict)."""
    get = cfg.get if isinstance(cfg, (dict, DictConfig)) else lambda k, d=None: getattr(cfg, k, d)
    return PaseEncoder(
        sample_rate=int(get("sample_rate", 16000)),
        sinc_filters=int(get("sinc_filters")), sinc_kernel_size=int(get("sinc_kernel_size")),
        sinc_min_low_hz=float(get("sinc_min_low_hz")), sinc_min_band_hz=float(get("sinc_min_band_hz")),
        conv_channels=list(get("conv_channels")), conv_kernel_sizes=list(get("conv_kernel_sizes")),
        conv_strides=list(get("conv_strides")), emb_dim=int(get("emb_dim")), rnn_type=str(get("rnn_type")),
        rnn_hidden_dim=int(get("rnn_hidden_dim")), rnn_layers=int(get("rnn_layers")),
        rnn_bidirectional=bool(get("rnn_bidirectional")), dense_skips=bool(get("dense_skips")),
    )


def _as_dict(x: Any) -> Optional[Dict[str, Any]]:
    if x is None:
        return None
    if isinstance(x, DictConfig):
        return OmegaConf.to_container(x, resolve=True)
    return dict(x)


@register_model("pase", dataclass=PaseConfig)
class PaseModel(BaseFairseqModel):
    """PASE encoder + workers.

    ``forward(source (B, T), padding_mask (B, T), positive, positive_padding_mask, negative,
    negative_padding_mask)`` returns ``{"losses": {worker: scalar}, "weights": {worker: float},
    "extras": {worker: {key: float}}, "emb": (B, emb_dim, N), "frame_lengths": (B,)}``.
    """

    def __init__(self, cfg: PaseConfig, encoder: PaseEncoder, workers: Dict[str, PaseWorker]):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.workers = nn.ModuleDict(workers)
        self.loss_weights = {name: float(w.cfg.weight) for name, w in workers.items()}
        self.has_classifiers = any(w.kind == "classifier" for w in workers.values())
        self._stats_ready = False
        for p in self.encoder.parameters():
            p.param_group = "encoder"
        for p in self.workers.parameters():
            p.param_group = "workers"

    @classmethod
    def build_model(cls, cfg: PaseConfig, task=None) -> "PaseModel":
        for path in cfg.worker_files or []:
            import_worker_file(path)
        encoder = encoder_from_cfg(cfg)
        entries = _as_dict(cfg.workers) or {}
        workers: Dict[str, PaseWorker] = {}
        for name, entry in entries.items():
            if entry is None:
                continue  # disabled with model.workers.<name>=null
            if not name.isidentifier():
                raise ValueError(f"worker name {name!r} must be a Python identifier")
            if not isinstance(entry, (dict, DictConfig)):
                raise ValueError(f"model.workers.{name} must be a mapping of options ({{}} for the defaults) "
                                 f"or null, got {entry!r}")
            workers[name] = build_worker(name, _as_dict(entry), emb_dim=encoder.emb_dim,
                                         sample_rate=encoder.sample_rate, hop=encoder.hop)
            workers[name].running_stats_batches = int(cfg.running_stats_batches)
        if not workers:
            raise ValueError(f"model.workers lists no worker; known workers: {', '.join(known_workers())}")
        if cfg.target_stats and not os.path.isfile(cfg.target_stats):
            logger.warning("model.target_stats=%s does not exist: training fails at its first step unless a "
                           "checkpoint provides the statistics", cfg.target_stats)
        logger.info("PASE workers: %s", ", ".join(f"{n} (weight {w.cfg.weight})" for n, w in workers.items()))
        return cls(cfg, encoder, workers)

    def _prepare_target_stats(self) -> None:
        """Before the first forward: load the statistics file, or fall back to running statistics
        (workers restored from a checkpoint already hold theirs)."""
        fresh = {n: w for n, w in self.workers.items()
                 if isinstance(w, RegressorWorker) and w.normalise_target and int(w.stats_source) == 0}
        if fresh:
            if self.cfg.target_stats:
                load_target_stats(self.cfg.target_stats, fresh)
            else:
                logger.warning(
                    "model.target_stats is not set: targets of %s are normalised with running statistics of "
                    "the first %d training batches; compute fixed training-set statistics with "
                    "scripts/pase_stats.py for reproducible runs", ", ".join(fresh), self.cfg.running_stats_batches)
        self._stats_ready = True

    @staticmethod
    def _lengths(wav: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if padding_mask is None:
            return torch.full((wav.size(0),), wav.size(1), dtype=torch.long, device=wav.device)
        return (~padding_mask).sum(1)

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(B, T)`` -> ``(features (B, T // hop, emb_dim), frame padding mask (B, T // hop) or None)``."""
        emb, frame_mask = self.encoder(source, padding_mask)
        return emb.transpose(1, 2), frame_mask

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                positive: Optional[torch.Tensor] = None, positive_padding_mask: Optional[torch.Tensor] = None,
                negative: Optional[torch.Tensor] = None, negative_padding_mask: Optional[torch.Tensor] = None,
                ) -> Dict[str, Any]:
        if not self._stats_ready:
            self._prepare_target_stats()
        b = source.size(0)
        lengths = self._lengths(source, padding_mask)
        if padding_mask is not None:
            source = source.masked_fill(padding_mask, 0.0)
        pos_lengths = neg_lengths = pos_emb = neg_emb = None
        if self.has_classifiers:
            if positive is None or negative is None:
                raise ValueError("the LIM/GIM workers need positive and negative chunks: set "
                                 "task.contrastive_chunks=true")
            wavs = [source, positive, negative]
            masks = [padding_mask, positive_padding_mask, negative_padding_mask]
            t = max(w.size(1) for w in wavs)
            all_lengths = torch.cat([self._lengths(w, m) for w, m in zip(wavs, masks)])
            wav = torch.cat([nn.functional.pad(w, (0, t - w.size(1))) for w in wavs])
            mask = None
            if any(m is not None for m in masks) or any(w.size(1) != t for w in wavs):
                mask = torch.arange(t, device=wav.device).unsqueeze(0) >= all_lengths.unsqueeze(1)
            emb_all, _ = self.encoder(wav, mask)
            emb, pos_emb, neg_emb = emb_all.split(b)
            frames = self.encoder.frame_lengths(all_lengths)
            frame_lengths, pos_lengths, neg_lengths = frames.split(b)
            source = wav[:b]
        else:
            emb, _ = self.encoder(source, padding_mask)
            frame_lengths = self.encoder.frame_lengths(lengths)
        batch = PaseBatch(wav=source, wav_lengths=lengths, emb=emb, frame_lengths=frame_lengths,
                          hop=self.encoder.hop, sample_rate=self.encoder.sample_rate, pos_emb=pos_emb,
                          neg_emb=neg_emb, pos_frame_lengths=pos_lengths, neg_frame_lengths=neg_lengths)
        losses: Dict[str, torch.Tensor] = {}
        extras: Dict[str, Dict[str, float]] = {}
        for name, worker in self.workers.items():
            losses[name], extras[name] = worker.run(batch)
        return {"losses": losses, "weights": self.loss_weights, "extras": extras, "emb": emb,
                "frame_lengths": frame_lengths}
