"""Error metrics between a value and its reference (computed in float64), and pitch metrics.

Tensor metrics: max abs, max abs / ref absmax, RMSE, RMSE / ref RMS, Pearson r, cosine, SNR dB.
Pitch metrics follow mir_eval's definitions (cents error on frames voiced in both, raw pitch / chroma accuracy
within 50 cents, voicing recall and false alarm) so numbers are comparable with published ones.
"""

from __future__ import annotations

import math

import numpy as np

TENSOR_METRICS = ("max_abs", "max_rel", "rmse", "rmse_rel", "pearson", "cosine", "snr_db")
# Metrics where smaller is better and which the tolerance policy bounds.
ERROR_METRICS = ("max_abs", "max_rel", "rmse", "rmse_rel")


def tensor_metrics(value: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """All tensor metrics of `value` against `ref` (same shape), in float64."""
    if value.shape != ref.shape:
        raise ValueError(f"shape mismatch: {tuple(value.shape)} vs reference {tuple(ref.shape)}")
    a = np.asarray(value, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if a.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "rmse": 0.0, "rmse_rel": 0.0, "pearson": 1.0, "cosine": 1.0,
                "snr_db": math.inf}
    finite = np.isfinite(a) & np.isfinite(r)
    if not finite.all():
        same_nonfinite = np.array_equal(np.isnan(a), np.isnan(r)) and np.array_equal(a[~finite], r[~finite])
        if not same_nonfinite:  # NaN/Inf where the reference has none (or vice versa) is a total failure
            return {"max_abs": math.inf, "max_rel": math.inf, "rmse": math.inf, "rmse_rel": math.inf,
                    "pearson": math.nan, "cosine": math.nan, "snr_db": -math.inf}
        a, r = a[finite], r[finite]
    e = a - r
    max_abs = float(np.max(np.abs(e))) if e.size else 0.0
    absmax = float(np.max(np.abs(r))) if r.size else 0.0
    rmse = float(np.sqrt(np.mean(e * e))) if e.size else 0.0
    rms = float(np.sqrt(np.mean(r * r))) if r.size else 0.0
    return {
        "max_abs": max_abs,
        "max_rel": _ratio(max_abs, absmax),
        "rmse": rmse,
        "rmse_rel": _ratio(rmse, rms),
        "pearson": _pearson(a, r),
        "cosine": _cosine(a, r),
        "snr_db": _snr_db(r, e),
    }


def _ratio(err: float, scale: float) -> float:
    if scale > 0:
        return err / scale
    return 0.0 if err == 0 else math.inf


def _pearson(a: np.ndarray, r: np.ndarray) -> float:
    da, dr = a - a.mean(), r - r.mean()
    den = math.sqrt(float(np.dot(da, da)) * float(np.dot(dr, dr)))
    if den == 0:
        return 1.0 if np.array_equal(a, r) else 0.0
    return float(np.dot(da, dr)) / den


def _cosine(a: np.ndarray, r: np.ndarray) -> float:
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(r, r)))
    if den == 0:
        return 1.0 if np.array_equal(a, r) else 0.0
    return float(np.dot(a, r)) / den


def _snr_db(r: np.ndarray, e: np.ndarray) -> float:
    pe, pr = float(np.dot(e, e)), float(np.dot(r, r))
    if pe == 0:
        return math.inf
    if pr == 0:
        return -math.inf
    return 10.0 * math.log10(pr / pe)


# ----------------------------------------------------------------------------------------------- pitch
def hz_to_cents(f0: np.ndarray, ref_hz: float = 10.0) -> np.ndarray:
    """mir_eval's cents scale (relative to 10 Hz); unvoiced (<= 0) frames map to 0."""
    f0 = np.asarray(f0, dtype=np.float64)
    out = np.zeros_like(f0)
    v = f0 > 0
    out[v] = 1200.0 * np.log2(f0[v] / ref_hz)
    return out


def pitch_metrics(est_hz: np.ndarray, ref_hz: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, float]:
    """Pitch agreement of `est_hz` with `ref_hz` (Hz per frame, 0 = unvoiced); `ignore` masks frames out.

    cents_p50/p99/max: |cents error| on frames voiced in both; voicing_agreement: fraction of frames with the
    same voiced/unvoiced decision; raw_pitch/chroma accuracy (50 cents), voicing recall / false alarm as in
    mir_eval.melody (reference voicing = ref > 0).
    """
    est = np.asarray(est_hz, dtype=np.float64).ravel()
    ref = np.asarray(ref_hz, dtype=np.float64).ravel()
    if est.shape != ref.shape:
        raise ValueError(f"pitch tracks differ in length: {est.shape[0]} vs reference {ref.shape[0]} frames")
    keep = np.ones_like(ref, dtype=bool) if ignore is None else ~np.asarray(ignore, dtype=bool).ravel()
    est, ref = est[keep], ref[keep]
    ev, rv = est > 0, ref > 0
    both = ev & rv
    cents = np.abs(hz_to_cents(est[both]) - hz_to_cents(ref[both]))
    n_rv, n_ru = int(rv.sum()), int((~rv).sum())
    chroma = np.abs(cents - 1200.0 * np.round(cents / 1200.0))
    return {
        "frames": int(keep.sum()),
        "ignored": int((~keep).sum()),
        "voiced_both": int(both.sum()),
        "cents_p50": float(np.percentile(cents, 50)) if cents.size else 0.0,
        "cents_p99": float(np.percentile(cents, 99)) if cents.size else 0.0,
        "cents_max": float(cents.max()) if cents.size else 0.0,
        "voicing_agreement": float(np.mean(ev == rv)) if ref.size else 1.0,
        "voicing_recall": float(np.sum(ev & rv) / n_rv) if n_rv else 1.0,
        "voicing_false_alarm": float(np.sum(ev & ~rv) / n_ru) if n_ru else 0.0,
        "raw_pitch_accuracy": float(np.sum(cents <= 50.0) / n_rv) if n_rv else 1.0,
        "raw_chroma_accuracy": float(np.sum(chroma <= 50.0) / n_rv) if n_rv else 1.0,
    }
