"""RMVPE pitch estimator on MLX, module paths identical to the original checkpoint keys.

Layout: audio (N,) at 16 kHz; mel (B, T, 128); U-Net activations NHWC (B, T, 128, C); salience (T, 360).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rvc_common.audio import check_mono
from rvc_common.config import RMVPE as CFG, RMVPEConfig
from rvc_common.instrument import layer_by_layer, output, split, tap
from rvc_mlx import precision
from rvc_mlx.dsp import log_mel, mel_filterbank
from rvc_mlx.fastmath import Sigmoid
from rvc_mlx.layers import GRU, BatchNorm, Conv2d, ConvTranspose2d
from rvc_mlx.runtime import mx, nn


class ConvBlockRes(nn.Module):
    """Two 3x3 conv-BN-ReLU plus residual (1x1 conv shortcut when channels change); NHWC."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = CFG.bn_eps):
        super().__init__()
        self.conv = [
            Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            BatchNorm(out_channels, eps=eps),
            nn.ReLU(),
            Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            BatchNorm(out_channels, eps=eps),
            nn.ReLU(),
        ]
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, 1)

    def __call__(self, x: mx.array, host: bool = False) -> mx.array:
        """`host`: the result may stay a host array (the CPU kernel's), for the next block (see _blocks)."""
        residual = self.shortcut(x) if "shortcut" in self else x
        if layer_by_layer():  # each original layer in turn (localisation)
            y = x
            for layer in self.conv:
                y = layer(y)
            return y + residual
        # conv -> BN -> ReLU (-> + residual) in one pass each, without the elementwise passes; the first pass's
        # result is the first ReLU's output, reported as such
        conv1, bn1, relu1, conv2, bn2, _ = self.conv
        y = output(relu1, conv1.conv_bn_relu(x, bn1, host=True))
        return conv2.conv_bn_relu(y, bn2, residual, host=host)


def _blocks(blocks: list[ConvBlockRes], x: mx.array) -> mx.array:
    """The blocks in turn; on the CPU kernel, their activations stay host arrays until the last block's output
    (one copy into MLX per stack instead of one per conv). A 1x1 shortcut (first block) reads the MLX input."""
    for i, block in enumerate(blocks):
        x = block(x, host=i < len(blocks) - 1 and "shortcut" not in blocks[i + 1])
    return x


class ResEncoderBlock(nn.Module):
    """ConvBlockRes stack, then AvgPool2d when `pool` is set: returns (pre-pool, pooled); NHWC."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] | None, n_blocks: int):
        super().__init__()
        self.conv = [ConvBlockRes(in_channels, out_channels)]
        self.conv += [ConvBlockRes(out_channels, out_channels) for _ in range(n_blocks - 1)]
        if pool is not None:
            self.pool = nn.AvgPool2d(pool, stride=pool)

    def __call__(self, x: mx.array):
        x = _blocks(self.conv, x)
        return (x, self.pool(x)) if "pool" in self else x


class Encoder(nn.Module):
    """Input BatchNorm, then pooling stages; returns (x, skips); NHWC."""

    def __init__(self, cfg: RMVPEConfig):
        super().__init__()
        self.bn = BatchNorm(cfg.in_channels, eps=cfg.bn_eps)
        self.layers = []
        c_in, c_out = cfg.in_channels, cfg.en_out_channels
        for _ in range(cfg.en_de_layers):
            self.layers.append(ResEncoderBlock(c_in, c_out, cfg.pool, cfg.n_blocks))
            c_in, c_out = c_out, c_out * 2
        self.out_channel = c_out

    def __call__(self, x: mx.array):
        skips = []
        x = self.bn(x)
        for layer in self.layers:
            t, x = layer(x)
            skips.append(t)
        return x, skips


class Intermediate(nn.Module):
    """Non-pooling ResEncoderBlocks at the bottom of the U-Net; NHWC."""

    def __init__(self, in_channels: int, out_channels: int, cfg: RMVPEConfig):
        super().__init__()
        self.layers = [ResEncoderBlock(in_channels, out_channels, None, cfg.n_blocks)]
        self.layers += [ResEncoderBlock(out_channels, out_channels, None, cfg.n_blocks)
                        for _ in range(cfg.inter_layers - 1)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class ResDecoderBlock(nn.Module):
    """ConvTranspose2d(3x3, stride 2, out-pad 1)-BN-ReLU, concat skip, ConvBlockRes stack; NHWC."""

    def __init__(self, in_channels: int, out_channels: int, cfg: RMVPEConfig):
        super().__init__()
        out_pad = (0, 1) if tuple(cfg.pool) == (1, 2) else (1, 1)
        self.conv1 = [
            ConvTranspose2d(in_channels, out_channels, 3, stride=cfg.pool, padding=1,
                            output_padding=out_pad, bias=False),
            BatchNorm(out_channels, eps=cfg.bn_eps),
            nn.ReLU(),
        ]
        self.conv2 = [ConvBlockRes(out_channels * 2, out_channels)]
        self.conv2 += [ConvBlockRes(out_channels, out_channels) for _ in range(cfg.n_blocks - 1)]

    def __call__(self, x: mx.array, concat_tensor: mx.array) -> mx.array:
        if layer_by_layer():  # each original layer in turn (localisation)
            for layer in self.conv1:
                x = layer(x)
        else:  # transposed conv -> BN -> ReLU in one pass: the ReLU's output, reported as such
            x = output(self.conv1[2], self.conv1[0].conv_bn_relu(x, self.conv1[1]))
        return _blocks(self.conv2, mx.concatenate([x, concat_tensor], axis=-1))


class Decoder(nn.Module):
    """Decoder stages consuming the encoder skips in reverse order; NHWC."""

    def __init__(self, in_channels: int, cfg: RMVPEConfig):
        super().__init__()
        self.layers = []
        for _ in range(cfg.en_de_layers):
            self.layers.append(ResDecoderBlock(in_channels, in_channels // 2, cfg))
            in_channels //= 2

    def __call__(self, x: mx.array, skips: list[mx.array]) -> mx.array:
        for i, layer in enumerate(self.layers):
            x = layer(x, skips[-1 - i])
        return x


class DeepUnet(nn.Module):
    """Encoder -> Intermediate -> Decoder; (B, T, 128, 1) -> (B, T, 128, 16)."""

    def __init__(self, cfg: RMVPEConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.intermediate = Intermediate(self.encoder.out_channel // 2, self.encoder.out_channel, cfg)
        self.decoder = Decoder(self.encoder.out_channel, cfg)

    def __call__(self, x: mx.array) -> mx.array:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    """Bidirectional GRU returning the output sequence; (B, T, F) -> (B, T, 2H)."""

    def __init__(self, input_features: int, hidden_features: int):
        super().__init__()
        self.gru = GRU(input_features, hidden_features, bidirectional=True)

    def __call__(self, x: mx.array) -> mx.array:
        return self.gru(x)[0]


class E2E(nn.Module):
    """mel (B, T, 128) -> salience (B, T, 360); T a multiple of 32."""

    # Modules the original keeps in float32 in half mode (`precision`): none. Its float32 steps are the
    # predictor's: the mel front end (RMVPE.mel) and the F0 decode (float64 on the host, decode_f0).
    FLOAT32: dict[str, str] = {}

    def __init__(self, cfg: RMVPEConfig = CFG):
        super().__init__()
        if cfg.n_gru != 1:
            raise ValueError(f"only n_gru=1 is supported (the original uses 1), got {cfg.n_gru}")
        self.unet = DeepUnet(cfg)
        self.cnn = Conv2d(cfg.en_out_channels, 3, 3, padding=1)
        self.fc = [
            BiGRU(3 * cfg.n_mels, cfg.gru_hidden),
            nn.Linear(2 * cfg.gru_hidden, cfg.n_class),
            nn.Dropout(0.25),
            Sigmoid(),
        ]

    def __call__(self, mel: mx.array) -> mx.array:
        x = self.cnn(self.unet(mel[..., None]))  # (B, T, 128, 3)
        # torch flattens (C, mel) per frame: feature index c * 128 + m
        x = x.transpose(0, 1, 3, 2).reshape(x.shape[0], x.shape[1], -1)
        for layer in self.fc:
            x = layer(x)
        return x


def decode_f0(salience: np.ndarray, threshold: float, cfg: RMVPEConfig = CFG) -> np.ndarray:
    """Salience-weighted mean of cents over argmax +- 4 bins -> Hz; 0 where max salience <= threshold.

    On the host in float64 like the original's numpy decode: float32 here puts ~1e-6 relative error on F0, which
    the NSF source integrates into phase error over a whole segment."""
    r = cfg.decode_radius
    sal = np.asarray(salience, dtype=np.float64)
    n = sal.shape[-1]
    idx = np.argmax(sal, axis=-1)[:, None] + np.arange(-r, r + 1)[None, :]
    valid = (idx >= 0) & (idx < n)  # the original zero-pads salience and cents by 4 bins
    idx_c = np.clip(idx, 0, n - 1)
    window = np.where(valid, np.take_along_axis(sal, idx_c, axis=-1), 0.0)
    cents = np.where(valid, cfg.cents_per_bin * idx_c + cfg.cents_offset, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cents = np.sum(window * cents, axis=-1) / np.sum(window, axis=-1)
    voiced = np.max(sal, axis=-1) > threshold
    return np.where(voiced, 10.0 * np.power(2.0, cents / 1200.0), 0.0)


class RMVPE:
    """RMVPE predictor: audio (N,) at 16 kHz -> salience (T, 360), f0 (T,) in Hz (0 = unvoiced), T = N//160+1."""

    def __init__(self, model: E2E, cfg: RMVPEConfig = CFG):
        self.model = model
        self.model.eval()
        self.cfg = cfg
        self.mel_basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax)

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str | None = None,
                        plan: precision.Plan | None = None) -> "RMVPE":
        """Load `rmvpe.pt` (converted once, cached) or an already converted `.safetensors`; `dtype` (float16,
        bfloat16) runs it with the committed plan for that dtype (`precision.load_plan`), `plan` with that one."""
        from rvc_mlx.checkpoints import load_mlx_weights

        model = E2E()
        load_mlx_weights(model, path, component="rmvpe")
        precision.configure(model, "rmvpe", dtype, plan)
        return cls(model)

    def mel(self, audio: np.ndarray) -> mx.array:
        cfg = self.cfg
        x = mx.array(check_mono(audio, cfg.min_samples, "RMVPE", cfg.sample_rate))[None]  # float32 front end
        return tap("rmvpe.mel", log_mel(x, self.mel_basis, cfg.n_fft, cfg.hop_length, cfg.win_length,
                                        cfg.mel_clamp), layout="NLC")

    def mel2hidden(self, mel: mx.array, chunk_frames: int | None = None) -> mx.array:
        chunk = chunk_frames or self.cfg.chunk_frames
        m = self.cfg.frame_multiple
        if chunk % m:
            raise ValueError(f"chunk_frames must be a multiple of {m}, got {chunk}")
        n_frames = mel.shape[1]
        mel = mx.pad(mel, [(0, 0), (0, m * ((n_frames - 1) // m + 1) - n_frames), (0, 0)], mode="reflect")
        chunks = [self.model(mel[:, s:s + chunk]) for s in range(0, mel.shape[1], chunk)]
        split("rmvpe mel chunks", len(chunks))
        return mx.concatenate(chunks, axis=1)[:, :n_frames]

    def salience_mx(self, audio_16k: np.ndarray, chunk_frames: int | None = None) -> mx.array:
        return tap("rmvpe.salience", self.mel2hidden(self.mel(audio_16k), chunk_frames)[0])

    def salience(self, audio_16k: np.ndarray, chunk_frames: int | None = None) -> np.ndarray:
        out = self.salience_mx(audio_16k, chunk_frames)
        mx.eval(out)
        return precision.host(out)  # float32 (a half model's salience too): decode_f0 reads it in float64

    def f0(self, audio_16k: np.ndarray, threshold: float | None = None,
           chunk_frames: int | None = None) -> np.ndarray:
        thr = self.cfg.threshold if threshold is None else threshold
        return tap("rmvpe.f0", decode_f0(self.salience(audio_16k, chunk_frames), thr, self.cfg))
