"""Pitch decoding shared by the MLX estimators: CREPE's viterbi, bins to Hz and nan-aware filters (numpy, no torch).

These follow torchcrepe 0.0.24 (`decode.viterbi`, `convert.dither`, `filter.median`, `filter.mean`) as RVC calls
them; the twin uses the package's own formulation (librosa's viterbi, torch filters) and a test proves both agree.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rvc_common.config import CREPE as CREPE_CFG, CREPEConfig


@lru_cache(maxsize=2)
def _log_transition(n_bins: int, eps: float) -> np.ndarray:
    """log of torchcrepe's transition matrix: triangle of half-width 12 bins, rows normalised."""
    xx, yy = np.meshgrid(np.arange(n_bins), np.arange(n_bins))
    transition = np.maximum(12 - np.abs(xx - yy), 0)
    transition = transition / transition.sum(axis=1, keepdims=True)
    out = np.log(transition + eps)
    out.setflags(write=False)
    return out


def viterbi(prob: np.ndarray) -> np.ndarray:
    """Most likely bin path through `prob` (T, n_bins) under CREPE's transition matrix; (T,) int64.

    Same semantics as `librosa.sequence.viterbi(prob.T, transition)`: log(p + tiny(dtype of prob)), uniform
    initial distribution, first index wins ties, float64 accumulation."""
    prob = np.asarray(prob)
    n_steps, n_bins = prob.shape
    eps = float(np.finfo(prob.dtype if np.issubdtype(prob.dtype, np.floating) else np.float32).tiny)
    log_trans = _log_transition(n_bins, eps)
    log_prob = np.log(prob + prob.dtype.type(eps))  # in the probabilities' dtype, like librosa
    ptr = np.zeros((n_steps, n_bins), dtype=np.int64)
    value = log_prob[0].astype(np.float64) + np.log(1.0 / n_bins + eps)
    rows = np.arange(n_bins)
    for t in range(1, n_steps):
        scores = value[None, :] + log_trans.T  # scores[j, k]: come from k into j
        ptr[t] = np.argmax(scores, axis=1)
        value = log_prob[t] + scores[rows, ptr[t]]
    state = np.empty(n_steps, dtype=np.int64)
    state[-1] = int(np.argmax(value))
    for t in range(n_steps - 2, -1, -1):
        state[t] = ptr[t + 1, state[t + 1]]
    return state


def bins_to_frequency(bins: np.ndarray, dither: np.ndarray, cfg: CREPEConfig = CREPE_CFG) -> np.ndarray:
    """Hz of each bin plus its dither (cents), as torchcrepe's `bins_to_frequency`."""
    cents = cfg.cents_per_bin * bins + cfg.cents_offset + dither
    return 10.0 * 2.0 ** (cents / 1200.0)


def median_filter(x: np.ndarray, win: int) -> np.ndarray:
    """torchcrepe `filter.median`: window median over non-NaN values (lower median), reflect-padded values are
    masked out at the edges; NaN where a window has no value."""
    pad = win // 2
    mask = ~np.isnan(x)
    values = np.pad(np.where(mask, x, 0.0), pad, mode="reflect")
    valid = np.pad(mask, pad, mode="constant", constant_values=False)
    windows = np.lib.stride_tricks.sliding_window_view(values, win)
    valid_w = np.lib.stride_tricks.sliding_window_view(valid, win)
    ordered = np.sort(np.where(valid_w, windows, np.inf), axis=-1)
    idx = np.maximum((valid_w.sum(axis=-1) - 1) // 2, 0)
    out = np.take_along_axis(ordered, idx[:, None], axis=-1)[:, 0]
    out[np.isinf(out)] = np.nan
    return out


def mean_filter(x: np.ndarray, win: int) -> np.ndarray:
    """torchcrepe `filter.mean`: window mean over non-NaN values with zero padding; exact zeros become NaN."""
    pad = win // 2
    mask = ~np.isnan(x)
    sums = np.convolve(np.where(mask, x, 0.0), np.ones(win), mode="full")[pad:pad + x.shape[0]]
    counts = np.convolve(mask.astype(x.dtype), np.ones(win), mode="full")[pad:pad + x.shape[0]]
    out = sums / np.maximum(counts, 1)
    out[out == 0] = np.nan
    return out
