"""Signal processing shared by the models: mel filters, framing, |STFT| and log-mel in MLX."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool = True) -> np.ndarray:
    """librosa's mel filters (slaney norm, float32), exactly the values the original uses; (n_mels, n_fft//2+1)."""
    import librosa

    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)
    basis = np.ascontiguousarray(basis, dtype=np.float32)
    basis.setflags(write=False)
    return basis


@lru_cache(maxsize=8)
def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window default), computed in float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_magnitude(audio, n_fft: int, hop: int, win_length: int):
    """|STFT| with centre reflect padding like torch.stft(center=True); audio (B, N) -> (B, frames, n_fft//2+1).
    Always in float32, as the originals' front ends run in every precision."""
    from rvc_mlx.precision import as_float32
    from rvc_mlx.runtime import mx

    audio = as_float32(audio)

    if win_length != n_fft:
        raise ValueError(f"stft_magnitude supports win_length == n_fft only (got {win_length} vs {n_fft})")
    pad = n_fft // 2
    x = mx.pad(audio, [(0, 0), (pad, pad)], mode="reflect")
    n_frames = 1 + (x.shape[1] - n_fft) // hop
    idx = mx.arange(n_frames)[:, None] * hop + mx.arange(n_fft)[None, :]
    frames = x[:, idx] * mx.array(hann_window(n_fft), dtype=audio.dtype)
    spec = mx.fft.rfft(frames, axis=-1)
    re, im = mx.real(spec), mx.imag(spec)
    return mx.sqrt(re * re + im * im)


def log_mel(audio, basis: np.ndarray, n_fft: int, hop: int, win_length: int, clamp: float):
    """log(clamp(mel_basis @ |STFT|)); audio (B, N) -> (B, frames, n_mels)."""
    from rvc_mlx.runtime import mx

    mag = stft_magnitude(audio, n_fft, hop, win_length)
    mel = mag @ mx.array(basis.T)
    return mx.log(mx.maximum(mel, clamp))
