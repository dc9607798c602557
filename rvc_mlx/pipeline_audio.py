"""Audio steps of the MLX pipeline around the models (numpy/scipy/soxr): input checks, mono + 16 kHz, high-pass,
key shift, RMS envelope mix, peak limiting. Layout: 1-D float arrays; (N, channels) accepted on input."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from rvc_common.config import PIPELINE, PipelineConfig
from rvc_common.instrument import split

# 400 samples: HuBERT's receptive field. With the original's one second of reflect padding per side, a shorter input
# yields no feature frame beyond the padding that each segment's output is trimmed by, so the output is empty.
MIN_SAMPLES_16K = 400


class AudioError(ValueError):
    """Input audio that cannot be converted (empty, too short, NaN/Inf, unreadable); one line with the fix."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (N,) or (N, channels) as float64, and the file's rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        audio, sr = sf.read(str(path), dtype="float64", always_2d=False)
    except Exception as e:  # libsndfile's message is one line already
        raise AudioError(f"{path}: not a readable audio file ({str(e).strip().splitlines()[0]})") from None
    return audio, int(sr)


def to_16k_mono(audio, sr: int, what: str = "input audio") -> np.ndarray:
    """float64 (N16,) at 16 kHz: integer PCM scaled to [-1, 1], channels averaged (librosa.to_mono), resampled
    with soxr very-high quality (librosa res_type="soxr_vhq", as Applio's loader)."""
    import librosa

    x = np.asarray(audio)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    elif x.dtype.kind != "f":
        raise AudioError(f"{what}: unsupported sample type {x.dtype}; pass float or integer PCM")
    x = x.astype(np.float64)
    if x.ndim == 2:  # (N, channels) as soundfile returns it
        axis = 1 if x.shape[1] <= 16 else 0
        split("input channels mixed", x.shape[axis])
        x = x.mean(axis=axis)
    if x.ndim != 1:
        raise AudioError(f"{what}: expected (samples,) or (samples, channels), got shape {x.shape}")
    if x.shape[0] == 0:
        raise AudioError(f"{what} is empty")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{what} contains NaN or Inf samples; clean it before converting")
    if not isinstance(sr, (int, np.integer)) or not 1000 <= sr <= 384000:
        raise AudioError(f"{what}: unsupported sample rate {sr!r} Hz (expected 1000..384000)")
    if sr != PIPELINE.sample_rate:
        split(f"input resampled from {sr} Hz", 1)
        x = librosa.resample(x, orig_sr=int(sr), target_sr=PIPELINE.sample_rate, res_type=PIPELINE.resample_quality)
    _check_16k_length(x.shape[0], what)
    return x


def _check_16k_length(n16: int, what: str) -> None:
    if n16 < MIN_SAMPLES_16K:
        raise AudioError(f"{what} is too short: {n16} samples at 16 kHz ({n16 / 16:.1f} ms); need at least "
                         f"{MIN_SAMPLES_16K} ({MIN_SAMPLES_16K / 16:.0f} ms)")


def check_input(audio: np.ndarray, sr: int, what: str = "input audio") -> None:
    """Refuse input that cannot convert before any model loads: empty, NaN/Inf, or too short once at 16 kHz."""
    x = np.asarray(audio)
    if x.shape[0] == 0:
        raise AudioError(f"{what} is empty")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise AudioError(f"{what} contains NaN or Inf samples; clean it before converting")
    _check_16k_length(int(np.ceil(x.shape[0] * PIPELINE.sample_rate / sr)), what)


@lru_cache(maxsize=2)
def _butter(order: int, cutoff: float, fs: int):
    from scipy import signal

    return signal.butter(N=order, Wn=cutoff, btype="high", fs=fs)


def highpass(audio: np.ndarray, cfg: PipelineConfig = PIPELINE) -> np.ndarray:
    """5th-order Butterworth high-pass at 48 Hz, forward-backward (zero phase), scipy's default odd padding."""
    from scipy import signal

    b, a = _butter(cfg.hp_order, cfg.hp_cutoff, cfg.sample_rate)
    return signal.filtfilt(b, a, audio)


def shift_f0(f0: np.ndarray, semitones: float) -> np.ndarray:
    return np.asarray(f0, dtype=np.float64) * 2.0 ** (semitones / 12.0)


def _linear_resize(x: np.ndarray, n: int) -> np.ndarray:
    """torch F.interpolate(mode="linear", align_corners=False) of a 1-D signal to n samples."""
    src = (np.arange(n) + 0.5) * (x.shape[0] / n) - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), x.shape[0] - 1)
    i1 = np.minimum(i0 + 1, x.shape[0] - 1)
    frac = src - i0
    return x[i0] * (1 - frac) + x[i1] * frac


def rms_mix(source: np.ndarray, source_sr: int, target: np.ndarray, target_sr: int, rate: float) -> np.ndarray:
    """Blend the output's loudness envelope towards the input's: out * rms_in^(1-rate) * rms_out^(rate-1)
    (frame = half a second, envelopes linearly stretched to the output length, rms_out >= 1e-6)."""
    import librosa

    rms1 = librosa.feature.rms(y=source, frame_length=source_sr // 2 * 2, hop_length=source_sr // 2)[0]
    rms2 = librosa.feature.rms(y=target, frame_length=target_sr // 2 * 2, hop_length=target_sr // 2)[0]
    n = target.shape[0]
    rms1 = _linear_resize(rms1.astype(np.float32), n)
    rms2 = np.maximum(_linear_resize(rms2.astype(np.float32), n), 1e-6)
    return target * (rms1 ** (1 - rate) * rms2 ** (rate - 1))


def limit_peak(audio: np.ndarray, peak: float) -> np.ndarray:
    m = np.abs(audio).max() / peak
    return audio / m if m > 1 else audio
