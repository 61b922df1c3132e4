"""Frame counts of every front-end this package uses, defined once (torch-free).

* Convolution stacks (HuBERT / wav2vec 2.0's feature encoder): :func:`conv_output_length` gives
  the frames of an unpadded stack ``[(dim, kernel, stride), ...]``; :data:`HUBERT_CONV_LAYERS` is
  HuBERT's stack (receptive field 400 samples, stride 320: 50 Hz at 16 kHz).
* Kaldi window framing with ``snip_edges`` (MFCC, 25 ms windows every 10 ms):
  :func:`kaldi_frame_geometry` and :func:`kaldi_num_frames` (``1 + (n - 400) // 160`` at 16 kHz).
* Label frame grids by rate (:func:`frames_at_rate`): 100 Hz is the MFCC grid, 50 Hz the HuBERT
  CNN grid; :func:`frame_centres` gives the sample at the centre of each frame.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from fairseq_ext.base.errors import UserError

ConvLayers = Sequence[Tuple[int, int, int]]
"""``[(dim, kernel, stride), ...]`` of an unpadded 1-D convolution stack."""

HUBERT_CONV_LAYERS: List[Tuple[int, int, int]] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
"""HuBERT / wav2vec 2.0 convolutional feature encoder (fairseq's default ``conv_feature_layers``)."""

FRAME_RATES = (50, 100)
"""Label frame rates at 16 kHz: 50 = HuBERT CNN frames, 100 = MFCC frames."""


def conv_output_length(n_samples: int, conv_layers: ConvLayers = HUBERT_CONV_LAYERS) -> int:
    """Frames an unpadded conv stack makes of ``n_samples`` samples (0 when shorter than its field).

    Computed layer by layer as ``L <- (L - kernel) // stride + 1``.
    """
    length = int(n_samples)
    for _, kernel, stride in conv_layers:
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def conv_receptive_field(conv_layers: ConvLayers = HUBERT_CONV_LAYERS) -> Tuple[int, int]:
    """``(receptive field, total stride)`` in samples of a conv stack (400, 320 for HuBERT)."""
    field, stride = 1, 1
    for _, kernel, s in conv_layers:
        field += (kernel - 1) * stride
        stride *= s
    return field, stride


def kaldi_frame_geometry(sample_rate: int = 16000) -> Tuple[int, int, int]:
    """``(window_size, window_shift, fft_size)`` in samples for Kaldi's 25 ms / 10 ms frames."""
    window_size = int(sample_rate * 25.0 * 0.001)
    window_shift = int(sample_rate * 10.0 * 0.001)
    fft_size = 1 << (window_size - 1).bit_length()
    return window_size, window_shift, fft_size


def kaldi_num_frames(n_samples: int, sample_rate: int = 16000) -> int:
    """Frames Kaldi outputs with ``snip_edges``: ``1 + (n - 400) // 160`` at 16 kHz, 0 if too short."""
    window_size, window_shift, _ = kaldi_frame_geometry(sample_rate)
    return 0 if n_samples < window_size else 1 + (n_samples - window_size) // window_shift


def frames_at_rate(n_samples: int, frame_rate: int) -> int:
    """Label frames of ``n_samples`` samples at 16 kHz and ``frame_rate`` (50: HuBERT CNN, 100: MFCC)."""
    if frame_rate == 100:
        return kaldi_num_frames(n_samples, 16000)
    if frame_rate == 50:
        return conv_output_length(n_samples)
    raise UserError(f"--frame-rate must be one of {FRAME_RATES}, got {frame_rate}")


def frame_centres(n_frames: int, frame_rate: int) -> np.ndarray:
    """Sample index (16 kHz) of the centre of each frame at ``frame_rate``, shape ``(n_frames,)``."""
    if frame_rate == 100:
        window, shift, _ = kaldi_frame_geometry(16000)
    elif frame_rate == 50:
        window, shift = conv_receptive_field()
    else:
        raise UserError(f"--frame-rate must be one of {FRAME_RATES}, got {frame_rate}")
    return np.arange(n_frames, dtype=np.int64) * shift + window // 2
