"""NSF-HiFiGAN and HiFiGAN generators on MLX (weight norm folded at conversion); (B, T, C).

The sine-source noise is an input (`eps_sine`), as in the twin.
"""

from __future__ import annotations

import math

import numpy as np

from rvc_common.config import SynthConfig
from rvc_common.instrument import layer_by_layer, split, tap
from rvc_mlx import cpu_kernels, dispatch
from rvc_mlx.fastmath import Tanh, tanh
from rvc_mlx.layers import Conv1d, ConvTranspose1d, leaky_relu, pad_time
from rvc_mlx.precision import as_float32
from rvc_mlx.runtime import mx, nn


def _zero_margins(x: mx.array, width: int, beyond: tuple[int, int]) -> mx.array:
    """Zero the frames of x's `width`-frame margins that lie outside the signal, which has beyond[0] (beyond[1])
    more frames to the left (right) of x's middle; in place when x is not shared (slice updates are donated)."""
    start, stop = _signal(x.shape[1], width, beyond)
    if start:
        x[:, :start] = 0
    if stop < x.shape[1]:
        x[:, stop:] = 0
    return x


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock "1": x += conv2(lrelu(conv1(lrelu(x)))) per dilation; (B, T, C)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = [Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
                       for d in dilations]
        self.convs2 = [Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations]

    @property
    def margin(self) -> int:
        """Frames of zero padding all its convs read on each side, together."""
        return sum(c.padding for c in self.convs1 + self.convs2)

    def __call__(self, x: mx.array) -> mx.array:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            x = conv2(leaky_relu(conv1(leaky_relu(x, self.slope)), self.slope)) + x
        return x

    def chunk(self, x: mx.array, beyond: tuple[int, int]) -> mx.array:
        """The block on a time chunk that carries `self.margin` extra frames on each side, so that no conv pads
        (each pad is a copy of the whole activation); the output is x's middle, T - 2 * margin frames. `beyond`:
        how many signal frames lie left and right of that middle (the chunk's halo reads them); margin frames past
        the signal's ends are zeros, as each conv's padding would be."""
        margin = self.margin
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            # frames outside the true signal must read as the zeros each conv's padding would supply
            xt = conv1(_zero_margins(leaky_relu(x, self.slope), margin, beyond), pad=False)
            margin -= conv1.padding
            xt = conv2(_zero_margins(leaky_relu(xt, self.slope), margin, beyond), pad=False)
            crop = conv1.padding + conv2.padding
            x = xt + x[:, crop:x.shape[1] - crop]
            margin -= conv2.padding
        return x

    def fused(self, x: np.ndarray, beyond: tuple[int, int]) -> np.ndarray:
        """`chunk` on host arrays, each conv in one kernel pass: leaky ReLU and the zeroed margins as it reads its
        input, the residual add as it writes."""
        margin = self.margin
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            xt = conv1.leaky_host(x, self.slope, _signal(x.shape[1], margin, beyond))
            margin -= conv1.padding
            crop = conv1.padding + conv2.padding
            x = conv2.leaky_host(xt, self.slope, _signal(xt.shape[1], margin, beyond),
                                 residual=x[:, crop:x.shape[1] - crop])
            margin -= conv2.padding
        return x


def _signal(length: int, width: int, beyond: tuple[int, int]) -> tuple[int, int]:
    """The frames of a `length`-frame chunk with `width`-frame margins that lie inside the signal (as
    `_zero_margins`): [start, stop)."""
    return max(0, width - beyond[0]), length - max(0, width - beyond[1])


def resblock_stage(blocks: list[ResBlock], x: mx.array) -> mx.array:
    """Mean of the blocks over the same input, in time chunks whose halos make them exact (convs are local).

    Each GEMM over a whole activation re-reads its accumulator from memory once per tap; over a chunk it stays in
    cache. The input is padded once for all the convs. On the CPU kernel each conv is one fused pass and the
    stage stays on the host. Layer-by-layer mode calls every block (and conv) on the whole signal instead."""
    if layer_by_layer():
        return _mean([block(x) for block in blocks])
    widest = max(block.margin for block in blocks)
    padded = pad_time(x, widest, widest)
    length = x.shape[1]
    rows = dispatch.resblock_frames(x.shape[0], x.shape[2], widest)
    # the whole stage on the host, one copy into MLX at the end
    fused = dispatch.fused(x, "conv1d+leaky+add", x.shape[2],
                           tuple(c.weight for b in blocks for c in (*b.convs1, *b.convs2)))
    if fused:
        padded, out = cpu_kernels.host(padded), np.empty(x.shape, dtype=np.float32)
    chunks = []
    for start in range(0, length, rows):
        stop = min(start + rows, length)
        beyond = (start, length - stop)
        pieces = [(b, padded[:, widest - b.margin + start:widest + stop + b.margin]) for b in blocks]
        mean = _mean([b.fused(piece, beyond) if fused else b.chunk(piece, beyond) for b, piece in pieces])
        if fused:
            out[:, start:stop] = mean
        else:
            chunks.append(mean)
    split("synth resblock time chunks", -(-length // rows))
    if fused:
        return mx.array(out)
    return mx.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0]


def _mean(outs: list[mx.array]) -> mx.array:
    return sum(outs[1:], outs[0]) / len(outs)  # no `0 +` pass over the first output


def _phase_cumsum(x: mx.array) -> mx.array:
    """fmod(cumsum(x, axis=1), 1) accumulated in float64 on the host (the input is one value per frame): torch's
    CPU cumsum accumulates float32 in double; a float32 scan over hundreds of frames loses ~3x more phase."""
    mx.eval(x)
    return mx.array(np.fmod(np.cumsum(np.array(x, dtype=np.float64), axis=1), 1.0).astype(np.float32))


class SineGenerator(nn.Module):
    """Applio's sine source: f0 (B, L) -> (sine_waveforms, uv, noise), each (B, L * upp, 1)."""

    def __init__(self, sampling_rate: int, sine_amp: float, noise_std: float):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.sine_amplitude = sine_amp
        self.noise_stddev = noise_std

    def __call__(self, f0: mx.array, upp: int, eps_sine: mx.array):
        f0 = as_float32(f0)[..., None]  # the phase (a cumulative sum over the segment) in float32, as the original
        b = f0.shape[0]
        inc = (f0 / self.sampling_rate) * mx.arange(1, upp + 1, dtype=f0.dtype)
        wrap = mx.remainder(inc[:, :-1, -1:] + 0.5, 1.0) - 0.5  # fmod == remainder for non-negative input
        cumulative = _phase_cumsum(wrap)
        inc = inc + mx.pad(cumulative, [(0, 0), (1, 0), (0, 0)])
        sine = mx.sin(2 * math.pi * inc.reshape(b, -1, 1)) * self.sine_amplitude
        uv = mx.repeat((f0 > 0).astype(f0.dtype), upp, axis=1)
        noise = (uv * self.noise_stddev + (1 - uv) * (self.sine_amplitude / 3)) * eps_sine
        return sine * uv + noise, uv, noise


class SourceModuleHnNSF(nn.Module):
    """SineGenerator -> Linear(1, 1) -> tanh; (B, L * upp, 1)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.l_sin_gen = SineGenerator(cfg.sr, cfg.sine_amp, cfg.noise_std)
        self.l_linear = nn.Linear(1, 1)
        self.l_tanh = Tanh()

    def __call__(self, f0: mx.array, upp: int, eps_sine: mx.array):
        sine, _, _ = self.l_sin_gen(f0, upp, eps_sine)
        return self.l_tanh(self.l_linear(sine)), None, None


def _channels(cfg: SynthConfig) -> list[int]:
    return [cfg.upsample_initial_channel // (2 ** (i + 1)) for i in range(len(cfg.upsample_rates))]


def _resblocks(cfg: SynthConfig, channels: list[int]) -> list[ResBlock]:
    return [ResBlock(channels[i], k, d, cfg.lrelu_slope) for i in range(len(channels))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)]


class HiFiGANNSFGenerator(nn.Module):
    """z (B, T, 192), f0 (B, T), g (B, 1, 256), eps_sine (B, T*upp, 1) -> audio (B, T*upp, 1)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.upp = cfg.upp
        self.slope = cfg.lrelu_slope
        self.m_source = SourceModuleHnNSF(cfg)
        self.conv_pre = Conv1d(cfg.inter_channels, cfg.upsample_initial_channel, 7, padding=3)
        channels = _channels(cfg)
        rates = cfg.upsample_rates
        self.ups, self.noise_convs = [], []
        for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes, strict=True)):
            padding = (k - u) // 2 if u % 2 == 0 else u // 2 + u % 2
            self.ups.append(ConvTranspose1d(cfg.upsample_initial_channel // (2 ** i), channels[i], k, u,
                                            padding=padding, output_padding=u % 2))
            stride = math.prod(rates[i + 1:]) if i + 1 < len(rates) else 1
            kernel = 1 if stride == 1 else stride * 2 - stride % 2
            self.noise_convs.append(Conv1d(1, channels[i], kernel, stride,
                                           padding=0 if stride == 1 else (kernel - stride) // 2))
        self.resblocks = _resblocks(cfg, channels)
        self.conv_post = Conv1d(channels[-1], 1, 7, padding=3, bias=False)
        self.cond = Conv1d(cfg.gin_channels, cfg.upsample_initial_channel, 1)

    def __call__(self, x: mx.array, f0: mx.array, g: mx.array, eps_sine: mx.array) -> mx.array:
        har, _, _ = self.m_source(f0, self.upp, eps_sine)
        x = self.conv_pre(x) + self.cond(g)
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs, strict=True)):
            if layer_by_layer():  # each layer called as the original does (localisation)
                x = up(leaky_relu(x, self.slope)) + noise_conv(har)
            else:  # leaky ReLU, upsampling and the source's add in one kernel pass on the CPU
                x = up.leaky_add(x, self.slope, noise_conv(har))
            x = tap(f"synth.upsampled{i}", x, layout="NLC")
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = tap(f"synth.stage{i}", resblock_stage(blocks, x), layout="NLC")
        return tanh(self.conv_post(leaky_relu(x, 0.01)))


class HiFiGANGenerator(nn.Module):
    """No-f0 generator: z (B, T, 192), g (B, 1, 256) -> audio (B, T*upp, 1)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.slope = cfg.lrelu_slope
        self.conv_pre = Conv1d(cfg.inter_channels, cfg.upsample_initial_channel, 7, padding=3)
        channels = _channels(cfg)
        rates_kernels = zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        self.ups = [ConvTranspose1d(cfg.upsample_initial_channel // (2 ** i), channels[i], k, u,
                                    padding=(k - u) // 2) for i, (u, k) in enumerate(rates_kernels)]
        self.resblocks = _resblocks(cfg, channels)
        self.conv_post = Conv1d(channels[-1], 1, 7, padding=3, bias=False)
        self.cond = Conv1d(cfg.gin_channels, cfg.upsample_initial_channel, 1)

    def __call__(self, x: mx.array, g: mx.array) -> mx.array:
        x = self.conv_pre(x) + self.cond(g)
        for i, up in enumerate(self.ups):
            x = tap(f"synth.upsampled{i}", up(leaky_relu(x, self.slope)), layout="NLC")
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = tap(f"synth.stage{i}", resblock_stage(blocks, x), layout="NLC")
        return tanh(self.conv_post(leaky_relu(x, 0.01)))
