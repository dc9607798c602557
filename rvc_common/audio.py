"""Input validation shared by every model: one-line errors naming the problem and the fix."""

from __future__ import annotations

import numpy as np


def check_mono(audio, min_samples: int, component: str, sample_rate: int = 16000) -> np.ndarray:
    """Return `audio` as float32 (N,) or raise ValueError: not mono, shorter than `min_samples`, NaN/Inf."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"{component} expects mono audio of shape (N,), got {audio.shape}; mix down to mono first")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"{component} expects float audio in [-1, 1], got dtype {audio.dtype}; "
                         "convert integer PCM with x / 32768")
    if audio.shape[0] < min_samples:
        raise ValueError(
            f"audio too short for {component}: {audio.shape[0]} samples; need >= {min_samples} "
            f"({min_samples / sample_rate:.3f} s at {sample_rate} Hz)"
        )
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"audio contains NaN or Inf samples; clean the input before running {component}")
    return audio.astype(np.float32, copy=False)
