"""Inputs the MLX port and its twin share: the seeded random draws fed to both (the synthesizer's noise, CREPE's
dither) and the synthesizer's input validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvc_common.config import CREPE as CREPE_CFG, CREPEConfig, SynthConfig


@dataclass(frozen=True)
class SynthNoise:
    """Standard-normal draws fed to both twins: flow prior (1, 192, T) and NSF source (1, T*upp, 1)."""

    eps_zp: np.ndarray
    eps_sine: np.ndarray | None


def make_noise(cfg: SynthConfig, frames: int, seed: int) -> SynthNoise:
    """Noise for `frames` frames from numpy's PCG64 (torch's RNG order: prior first, then the source)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    eps_zp = rng.standard_normal((1, cfg.inter_channels, frames)).astype(np.float32)
    eps_sine = rng.standard_normal((1, frames * cfg.upp, 1)).astype(np.float32) if cfg.use_f0 else None
    return SynthNoise(eps_zp, eps_sine)


def check_inputs(cfg: SynthConfig, features, pitch_coarse, pitch_hz, speaker_id: int, noise: SynthNoise | None):
    """Validate shapes and ranges; returns (features f32, coarse i64 | None, hz f32 | None, eps_zp, eps_sine)."""
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[1] != cfg.text_enc_hidden_dim:
        raise ValueError(f"features must be (frames, {cfg.text_enc_hidden_dim}) for a {cfg.version} model, "
                         f"got {feats.shape}")
    t = feats.shape[0]
    if t < 1:
        raise ValueError("features have no frames")
    if not np.all(np.isfinite(feats)):
        raise ValueError("features contain NaN or Inf")
    if not 0 <= int(speaker_id) < cfg.spk_embed_dim:
        raise ValueError(f"speaker_id {speaker_id} out of range: the model has {cfg.spk_embed_dim} speakers")
    coarse = hz = None
    if cfg.use_f0:
        if pitch_coarse is None or pitch_hz is None:
            raise ValueError("this model uses pitch: pass pitch_coarse and pitch_hz")
        coarse = np.asarray(pitch_coarse).astype(np.int64)
        hz = np.asarray(pitch_hz, dtype=np.float32)
        if coarse.shape != (t,) or hz.shape != (t,):
            raise ValueError(f"pitch must be ({t},) like the features, got {coarse.shape} and {hz.shape}")
        if coarse.min() < 1 or coarse.max() > 255:
            raise ValueError("pitch_coarse must lie in 1..255 (RVC's coarse pitch bins)")
        if not np.all(np.isfinite(hz)) or hz.min() < 0:
            raise ValueError("pitch_hz must be finite and >= 0 (0 = unvoiced)")
    eps_zp = eps_sine = None
    if noise is not None:
        eps_zp = np.asarray(noise.eps_zp, dtype=np.float32)
        if eps_zp.shape != (1, cfg.inter_channels, t):
            raise ValueError(f"noise.eps_zp must be (1, {cfg.inter_channels}, {t}), got {eps_zp.shape}")
        if cfg.use_f0:
            eps_sine = np.asarray(noise.eps_sine, dtype=np.float32)
            if eps_sine.shape != (1, t * cfg.upp, 1):
                raise ValueError(f"noise.eps_sine must be (1, {t * cfg.upp}, 1), got {eps_sine.shape}")
    return feats.astype(np.float32), coarse, hz, eps_zp, eps_sine


def coarse_pitch(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch bins (1..255) from Hz (0 = unvoiced -> 1)."""
    mel_min, mel_max = 1127 * np.log(1 + 50 / 700), 1127 * np.log(1 + 1100 / 700)
    mel = 1127 * np.log(1 + np.asarray(f0_hz, dtype=np.float64) / 700)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - mel_min) * 254 / (mel_max - mel_min) + 1
    mel[mel <= 1] = 1
    mel[mel > 255] = 255
    return np.rint(mel).astype(np.int64)


def crepe_dither(n_frames: int, seed: int = 0, cfg: CREPEConfig = CREPE_CFG) -> np.ndarray:
    """The cents noise torchcrepe's `bins_to_cents` draws (triangular on [-20, 20]), made an explicit input.

    torchcrepe draws it from numpy's global RNG; `np.random.seed(seed)` before `torchcrepe.predict` makes the
    package draw exactly these values (one stream, consumed batch after batch)."""
    from scipy import stats

    width = cfg.dither_cents
    return stats.triang.rvs(c=0.5, loc=-width, scale=2 * width, size=n_frames,
                            random_state=np.random.RandomState(seed))
