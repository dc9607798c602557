"""FCPE pitch estimator (torchfcpe 0.0.4 `CFNaiveMelPE`, conv-only) on MLX, module paths equal to the checkpoint.

Layout: audio (N,) at 16 kHz; mel (B, T, 128); input stack and conv module interiors NLC (B, T, C) where torch
has (B, C, T); encoder layers (B, T, 512) as in torch; latent (T, 360); f0 (T,) in Hz (0 = unvoiced), T = N//160+1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rvc_common.audio import check_mono
from rvc_common.config import FCPE_CFG, FCPEConfig
from rvc_common.instrument import layer_by_layer, tap
from rvc_mlx import precision
from rvc_mlx.checkpoints import check_fcpe_checkpoint
from rvc_mlx.dsp import hann_window, mel_filterbank
from rvc_mlx.fastmath import GLU, SiLU, sigmoid
from rvc_mlx.layers import Conv1d
from rvc_mlx.runtime import mx, nn


def read_fcpe_state(raw: object, source: Path) -> dict[str, np.ndarray]:
    from rvc_mlx.checkpoints import tensors_to_numpy

    state = tensors_to_numpy(check_fcpe_checkpoint(raw, source), source, "FCPE")
    # Training-only buffer (target blurring); cent_table stays: it is the decoder's bin -> cents map.
    state.pop("gaussian_blurred_cent_mask", None)
    return state


class Transpose(nn.Module):
    """Placeholder for torch's (B, T, C) <-> (B, C, T) swap: MLX convs are already channels-last; identity."""

    def __call__(self, x: mx.array) -> mx.array:
        return x


class GroupNorm(nn.GroupNorm):
    """pytorch_compatible GroupNorm with two-pass statistics; (B, T, C).

    nn.GroupNorm reduces each group (T frames x 128 channels, inputs up to ~1e3) in one float32 pass of
    mx.fast.layer_norm: 5e-6 relative error on the 2.4-second speech input against torch float32's 8e-8; this
    gives 4e-7.
    Half inputs are normalised in float32 (as torch accumulates them): squared deviations of ~1e3 overflow
    float16, and the layer's output collapsed to its bias.
    """

    def __init__(self, num_groups: int, dims: int, eps: float = 1e-5):
        super().__init__(num_groups, dims, eps=eps, pytorch_compatible=True)

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype != mx.float32:
            return self._normalise(x.astype(mx.float32), self.weight.astype(mx.float32),
                                   self.bias.astype(mx.float32)).astype(x.dtype)
        return self._normalise(x, self.weight, self.bias)

    def _normalise(self, x: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
        b, t, c = x.shape
        g = x.reshape(b, t, self.num_groups, c // self.num_groups)
        # Means over time per channel, then over the group's channels: two short float32 sums, not one long one.
        d = g - mx.mean(mx.mean(g, axis=1, keepdims=True), axis=3, keepdims=True)
        var = mx.mean(mx.mean(d * d, axis=1, keepdims=True), axis=3, keepdims=True)
        return weight * (d * mx.rsqrt(var + self.eps)).reshape(b, t, c) + bias


class DepthWiseConv1d(nn.Module):
    """Per-channel Conv1d, "same" padding; (B, T, C)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


class ConformerConvModule(nn.Module):
    """LayerNorm -> 1x1 conv -> GLU -> depthwise conv -> SiLU -> 1x1 conv; (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: FCPEConfig):
        super().__init__()
        inner = cfg.hidden * cfg.expansion
        self.net = [
            nn.LayerNorm(cfg.hidden),
            Transpose(),
            Conv1d(cfg.hidden, 2 * inner, 1),
            GLU(axis=-1),  # channels are last here (torch: dim=1 of (B, C, T)); first half * sigmoid(second)
            DepthWiseConv1d(inner, cfg.kernel_size),
            SiLU(),
            Conv1d(inner, cfg.hidden, 1),
            Transpose(),
            nn.Dropout(0.0),  # index 8 of the original Sequential; p = 0 at inference
        ]

    def __call__(self, x: mx.array) -> mx.array:
        if layer_by_layer():  # each original layer in turn (localisation)
            for layer in self.net:
                x = layer(x)
            return x
        norm, _, conv_in, _, depthwise, _, conv_out, _, _ = self.net
        # GLU -> depthwise conv -> SiLU in one pass on the CPU kernel (fastmath's GLU and SiLU elsewhere)
        return conv_out(depthwise.conv.glu_depthwise_silu(conv_in(norm(x))))


class CFNEncoderLayer(nn.Module):
    """x + ConformerConvModule(x); `norm` only feeds the attention branch, absent when conv_only; (B, T, C)."""

    def __init__(self, cfg: FCPEConfig):
        super().__init__()
        self.conformer = ConformerConvModule(cfg)
        self.norm = nn.LayerNorm(cfg.hidden)  # in the checkpoint, unused in forward

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.conformer(x)


class ConformerNaiveEncoder(nn.Module):
    """Stack of conv-only encoder layers; (B, T, C)."""

    def __init__(self, cfg: FCPEConfig):
        super().__init__()
        self.encoder_layers = [CFNEncoderLayer(cfg) for _ in range(cfg.n_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.encoder_layers:
            x = layer(x)
        return x


class CFNaiveMelPE(nn.Module):
    """mel (B, T, 128) -> latent (B, T, 360) = sigmoid(pitch-bin logits); `cent_table` (360,) comes from the file."""

    # Kept in float32 in every precision (`precision`); the mel front end (_log_mel) and the decode
    # (decode_f0) are the predictor's, float32 too.
    FLOAT32 = {
        "cent_table": "the F0 decode's bin -> cents map (2051..9151 cents: float16 rounds it by up to 4 cents)",
    }

    def __init__(self, cfg: FCPEConfig = FCPE_CFG):
        super().__init__()
        self.input_stack = [
            Conv1d(cfg.n_mels, cfg.hidden, 3, padding=1),
            GroupNorm(cfg.groups, cfg.hidden),
            nn.LeakyReLU(0.01),
            Conv1d(cfg.hidden, cfg.hidden, 3, padding=1),
        ]
        self.net = ConformerNaiveEncoder(cfg)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.output_proj = nn.Linear(cfg.hidden, cfg.n_class)  # weight norm folded at conversion
        # Loaded, not recomputed: the original builds it with float32 torch.linspace, which a float64 formula
        # would miss by up to ~1e-3 cents.
        self.cent_table = mx.zeros((cfg.n_class,))

    def __call__(self, mel: mx.array) -> mx.array:
        x = mel
        for layer in self.input_stack:
            x = layer(x)
        x = self.norm(self.net(x))
        return sigmoid(self.output_proj(x))


def _log_mel(audio: mx.array, basis: np.ndarray, cfg: FCPEConfig) -> mx.array:
    """torchfcpe's Wav2MelModule: (B, N) -> log-mel (B, N//hop + 1, n_mels); always float32."""
    audio = precision.as_float32(audio)
    n = audio.shape[1]
    pad = cfg.pad
    # The original reflects when the input is longer than the pad and zero-pads otherwise (reflect needs
    # pad < N); for N < hop it also widens the right pad to one full window, which min_samples rules out.
    mode = "reflect" if n > pad else "constant"
    x = mx.pad(audio, [(0, 0), (pad, pad)], mode=mode)
    n_stft = 1 + (x.shape[1] - cfg.n_fft) // cfg.hop_length  # center=False: N // hop frames
    idx = mx.arange(n_stft)[:, None] * cfg.hop_length + mx.arange(cfg.n_fft)[None, :]
    frames = x[:, idx] * mx.array(hann_window(cfg.win_length), dtype=audio.dtype)
    spec = mx.fft.rfft(frames, axis=-1)
    re, im = mx.real(spec), mx.imag(spec)
    mag = mx.sqrt(re * re + im * im + cfg.magnitude_eps)
    mel = mx.log(mx.maximum(mag @ mx.array(basis.T), cfg.mel_clamp))
    # Wav2MelModule then fits the frame count to N//hop + 1: one frame short, so it repeats the last one.
    target = cfg.n_frames(n)
    if mel.shape[1] < target:
        mel = mx.concatenate([mel] + [mel[:, -1:]] * (target - mel.shape[1]), axis=1)
    return mel[:, :target]


def decode_f0(latent: mx.array, cent_table: mx.array, threshold: float, cfg: FCPEConfig = FCPE_CFG) -> mx.array:
    """local_argmax: salience-weighted mean of cents over argmax +- 4 (clamped) bins -> Hz; 0 where max <= thr."""
    latent, cent_table = precision.as_float32(latent), precision.as_float32(cent_table)  # cents, Hz: float32
    r, n = cfg.decode_radius, latent.shape[-1]
    center = mx.argmax(latent, axis=-1)
    # Clamped, not zero-padded: near the edges the first / last bin is counted more than once, as in the original.
    idx = mx.clip(center[:, None] + mx.arange(-r, r + 1)[None, :], 0, n - 1)
    window = mx.take_along_axis(latent, idx, axis=-1)
    cents = mx.sum(window * cent_table[idx], axis=-1) / mx.sum(window, axis=-1)
    # The original multiplies cents by -inf and lets 2**(-inf) give 0; a select also keeps 0/0 frames at 0.
    voiced = mx.max(latent, axis=-1) > threshold
    return mx.where(voiced, 10.0 * mx.power(2.0, cents / 1200.0), 0.0)


class FCPE:
    """FCPE predictor: audio (N,) at 16 kHz -> mel (1, T, 128), latent (T, 360), f0 (T,) in Hz; T = N//160+1."""

    def __init__(self, model: CFNaiveMelPE, cfg: FCPEConfig = FCPE_CFG):
        self.model = model
        self.model.eval()
        self.cfg = cfg
        self.mel_basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax,
                                        htk=cfg.mel_htk)

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str | None = None,
                        plan: precision.Plan | None = None) -> "FCPE":
        """Load torchfcpe's `fcpe_c_v001.pt` (converted once, cached) or an already converted `.safetensors`;
        `dtype` (float16, bfloat16) runs it with the committed plan for that dtype, `plan` with that one."""
        from rvc_mlx.checkpoints import load_mlx_weights

        model = CFNaiveMelPE()
        load_mlx_weights(model, path, component="fcpe", read_state=read_fcpe_state)
        precision.configure(model, "fcpe", dtype, plan)
        return cls(model)

    def mel_mx(self, audio_16k: np.ndarray) -> mx.array:
        cfg = self.cfg
        x = mx.array(check_mono(audio_16k, cfg.min_samples, "FCPE", cfg.sample_rate))[None]
        return tap("fcpe.mel", _log_mel(x, self.mel_basis, cfg))

    def latent_mx(self, audio_16k: np.ndarray) -> mx.array:
        return tap("fcpe.latent", self.model(self.mel_mx(audio_16k))[0])

    def mel(self, audio_16k: np.ndarray) -> np.ndarray:
        out = self.mel_mx(audio_16k)
        mx.eval(out)
        return precision.host(out)

    def latent(self, audio_16k: np.ndarray) -> np.ndarray:
        out = self.latent_mx(audio_16k)
        mx.eval(out)
        return precision.host(out)

    def f0(self, audio_16k: np.ndarray, threshold: float | None = None) -> np.ndarray:
        thr = self.cfg.threshold if threshold is None else threshold
        f0 = tap("fcpe.f0", decode_f0(self.latent_mx(audio_16k), self.model.cent_table, thr, self.cfg))
        mx.eval(f0)
        return np.array(f0)
