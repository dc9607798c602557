"""Audio-level metrics of an estimated waveform against a reference (MLX pipeline output vs its PyTorch twin).

All metrics are computed in float64 from 1-D signals of equal length:

- ``snr_db``: plain signal-to-noise ratio of the sample-wise difference; strict, punishes any phase shift.
- ``si_sdr_db``: scale-invariant SDR (Le Roux et al. 2019), after removing each signal's mean; ignores a
  gain and a DC offset.
- ``multi_resolution_stft_distance``: Parallel WaveGAN's multi-resolution STFT loss (Yamamoto et al. 2020),
  spectral convergence + log-magnitude L1 averaged over three resolutions; insensitive to phase.
- ``log_spectral_distance_db``: log-spectral distance in dB; insensitive to phase.

The spectral metrics exist because two pipelines can agree perceptually while their samples are offset by
a fraction of a period (a 1-sample delay of a 440 Hz tone at 40 kHz caps SNR near 23 dB), so a low SNR alone
does not say the audio differs. numpy only: no torch, no mlx.
"""

from __future__ import annotations

import math

import numpy as np

AUDIO_METRICS = ("snr_db", "si_sdr_db", "mrstft", "lsd_db", "max_abs", "length")
# (n_fft, hop, win_length) in samples, as in the brief: the 512/1024/2048 ladder with 75 % overlap.
MRSTFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
MRSTFT_EPS = 1e-7  # added to magnitudes before the log, so silent bins give log(eps) on both sides, not -inf
LSD_EPS = 1e-10  # added to power before 10 log10: a -100 dB floor below which differences are not counted


def snr_db(est: np.ndarray, ref: np.ndarray) -> float:
    """Signal-to-noise ratio 10 log10(sum ref^2 / sum (est - ref)^2) in dB, computed in float64.

    +inf when est == ref exactly (including both silent); -inf when ref is all zero but est is not.
    """
    e, r = _as_pair(est, ref)
    return _snr_db(e, r)


def si_sdr_db(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., "SDR - half-baked or well done?", 2019).

    The mean of each signal is removed first (as in the paper's reference code and most toolkits), then
    alpha = <est, ref> / <ref, ref>, target = alpha ref, SI-SDR = 10 log10(|target|^2 / |est - target|^2).
    So a gain on est and a constant offset on either signal do not change the value.
    Degenerate cases (after mean removal): both zero -> +inf (they agree up to an offset); exactly one zero,
    or est orthogonal to ref -> -inf; est an exact multiple of ref -> +inf.
    """
    e, r = _as_pair(est, ref)
    return _si_sdr_db(e, r)


def multi_resolution_stft_distance(est: np.ndarray, ref: np.ndarray, sr: int,
                                   resolutions=MRSTFT_RESOLUTIONS) -> float:
    """Multi-resolution STFT distance (Yamamoto et al. 2020, Parallel WaveGAN's auxiliary loss); 0 when equal.

    For each (n_fft, hop, win_length) in `resolutions` (samples): S = |STFT| with a periodic Hann window of
    win_length centred in n_fft (as torch.stft), centred frames (reflect padding of n_fft // 2 on each side,
    1 + len // hop frames), then
        sc  = ||S_ref - S_est||_F / ||S_ref||_F                               (spectral convergence)
        mag = mean over frames and bins of |log(S_ref + eps) - log(S_est + eps)|, eps = 1e-7
    and the result is the mean over resolutions of sc + mag. (Parallel WaveGAN floors the power at 1e-7
    instead of adding eps to the magnitude; the difference only matters in near-silent bins.)
    Signals shorter than n_fft are zero-padded at the end to n_fft samples before the reflect padding, so
    any length (even 0) works; both signals are padded identically. sc is 0 when both spectra are zero and
    +inf when only the reference is. `sr` is checked but unused: the resolutions are in samples, and the
    argument keeps every audio metric's signature alike.
    """
    e, r = _as_pair(est, ref)
    _check_sr(sr)
    return _mrstft(e, r, resolutions)


def log_spectral_distance_db(est: np.ndarray, ref: np.ndarray, sr: int, n_fft: int = 2048, hop: int = 512) -> float:
    """Log-spectral distance in dB; 0 when equal.

    LSD = mean over frames of sqrt(mean over bins of (10 log10(P_ref + eps) - 10 log10(P_est + eps))^2),
    P = |STFT|^2 with a periodic Hann window of n_fft, centred frames (reflect padding n_fft // 2), eps = 1e-10
    (differences below about -100 dB power do not count). Signals shorter than n_fft are zero-padded at the end
    to n_fft first, as in `multi_resolution_stft_distance`. `sr` is checked but unused (n_fft, hop in samples).
    """
    e, r = _as_pair(est, ref)
    _check_sr(sr)
    return _lsd_db(e, r, n_fft, hop)


def audio_metrics(est: np.ndarray, ref: np.ndarray, sr: int) -> dict[str, float]:
    """Every audio metric of `est` against `ref` (1-D, same length, finite).

    Keys: snr_db, si_sdr_db, mrstft (default resolutions), lsd_db (n_fft 2048, hop 512), max_abs
    (max |est - ref|, 0 for empty signals) and length (samples, an int). Raises ValueError for non-1-D
    inputs, different lengths, or NaN/Inf in either input (the message names which).
    """
    e, r = _as_pair(est, ref)
    _check_sr(sr)
    return {
        "snr_db": _snr_db(e, r),
        "si_sdr_db": _si_sdr_db(e, r),
        "mrstft": _mrstft(e, r, MRSTFT_RESOLUTIONS),
        "lsd_db": _lsd_db(e, r, 2048, 512),
        "max_abs": float(np.max(np.abs(e - r))) if e.size else 0.0,
        "length": int(e.size),
    }


# ----------------------------------------------------------------------------------------------- helpers
def _as_pair(est, ref) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(est)
    r = np.asarray(ref)
    for name, x in (("est", e), ("ref", r)):
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D audio, got shape {tuple(x.shape)}")
    if e.shape[0] != r.shape[0]:
        raise ValueError(f"est and ref differ in length: {e.shape[0]} vs {r.shape[0]} samples")
    # float64 so sums over millions of float32 samples do not lose the small differences being measured
    e = e.astype(np.float64, copy=False)
    r = r.astype(np.float64, copy=False)
    for name, x in (("est", e), ("ref", r)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN/Inf ({int(np.sum(~np.isfinite(x)))} samples)")
    return e, r


def _check_sr(sr) -> None:
    if not (isinstance(sr, (int, float, np.integer, np.floating)) and sr > 0):
        raise ValueError(f"sr must be a positive sample rate in Hz, got {sr!r}")


def _snr_db(e: np.ndarray, r: np.ndarray) -> float:
    d = e - r
    pe, pr = float(np.dot(d, d)), float(np.dot(r, r))
    if pe == 0:
        return math.inf
    if pr == 0:
        return -math.inf
    return 10.0 * math.log10(pr / pe)


def _si_sdr_db(e: np.ndarray, r: np.ndarray) -> float:
    e = e - e.mean() if e.size else e
    r = r - r.mean() if r.size else r
    pe, pr = float(np.dot(e, e)), float(np.dot(r, r))
    if pe == 0 or pr == 0:
        # both constant: identical up to the removed offset; only one constant: nothing of ref is in est
        return math.inf if pe == pr else -math.inf
    target = (float(np.dot(e, r)) / pr) * r
    noise = e - target
    pt, pn = float(np.dot(target, target)), float(np.dot(noise, noise))
    if pn == 0:
        return math.inf
    if pt == 0:
        return -math.inf
    return 10.0 * math.log10(pt / pn)


def _hann(win_length: int, n_fft: int) -> np.ndarray:
    # periodic Hann (torch.hann_window / scipy 'hann' with fftbins=True), zero-padded to n_fft in the centre
    # the way torch.stft places a shorter window
    n = np.arange(win_length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left))


def _stft(x: np.ndarray, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """Complex STFT of the rows of `x` (..., samples) -> (..., frames, n_fft // 2 + 1), centred frames."""
    if not (n_fft >= 2 and hop >= 1 and 1 <= win_length <= n_fft):
        raise ValueError(f"bad STFT resolution n_fft={n_fft}, hop={hop}, win_length={win_length}")
    n = x.shape[-1]
    if n < n_fft:  # short signals: zero-pad at the end so reflect padding and at least one full frame exist
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_fft - n)])
    half = n_fft // 2
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    return np.fft.rfft(frames * _hann(win_length, n_fft), axis=-1)


def _mrstft(e: np.ndarray, r: np.ndarray, resolutions) -> float:
    resolutions = tuple(resolutions)
    if not resolutions:
        raise ValueError("resolutions must name at least one (n_fft, hop, win_length)")
    x = np.stack([e, r])  # one framing + rfft for both signals
    total = 0.0
    for n_fft, hop, win_length in resolutions:
        s_est, s_ref = np.abs(_stft(x, int(n_fft), int(hop), int(win_length)))
        num = float(np.linalg.norm(s_ref - s_est))
        den = float(np.linalg.norm(s_ref))
        if den > 0:
            sc = num / den
        else:
            sc = 0.0 if num == 0 else math.inf
        mag = float(np.mean(np.abs(np.log(s_ref + MRSTFT_EPS) - np.log(s_est + MRSTFT_EPS))))
        total += sc + mag
    return total / len(resolutions)


def _lsd_db(e: np.ndarray, r: np.ndarray, n_fft: int, hop: int) -> float:
    p_est, p_ref = np.abs(_stft(np.stack([e, r]), int(n_fft), int(hop), int(n_fft))) ** 2
    d = 10.0 * np.log10(p_ref + LSD_EPS) - 10.0 * np.log10(p_est + LSD_EPS)
    return float(np.mean(np.sqrt(np.mean(d * d, axis=-1))))
