"""NSF-HiFiGAN and HiFiGAN generators (rvc/lib/algorithm/generators/hifigan_nsf.py, hifigan.py, residuals.py).

The sine-source noise and the random phase are inputs (`eps_sine`), never drawn here; (B, C, T).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from rvc_common.config import SynthConfig


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock "1": per (dilated conv, conv) pair x += conv2(lrelu(conv1(lrelu(x)))); (B, C, T)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope

        def conv(d):
            return weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                         padding=(kernel_size * d - d) // 2))

        self.convs1 = nn.ModuleList([conv(d) for d in dilations])
        self.convs2 = nn.ModuleList([conv(1) for _ in dilations])

    def forward(self, x):
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            xt = F.leaky_relu(conv1(F.leaky_relu(x, self.slope)), self.slope)
            x = conv2(xt) + x
        return x


class SineGenerator(nn.Module):
    """Applio's SineGenerator: phase from per-frame increments with a wrapped cumulative offset;
    f0 (B, L) -> (sine_waveforms, uv, noise), each (B, L * upp, 1)."""

    def __init__(self, sampling_rate: int, sine_amp: float, noise_std: float):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.sine_amplitude = sine_amp
        self.noise_stddev = noise_std

    def forward(self, f0, upp: int, eps_sine):
        f0 = f0.unsqueeze(-1)  # (B, L, 1)
        b = f0.shape[0]
        grid = torch.arange(1, upp + 1, dtype=f0.dtype)
        inc = (f0 / self.sampling_rate) * grid
        wrap = torch.fmod(inc[:, :-1, -1:] + 0.5, 1.0) - 0.5
        cumulative = wrap.cumsum(dim=1).fmod(1.0)
        inc = inc + F.pad(cumulative, (0, 0, 1, 0))
        phase = inc.reshape(b, -1, 1)  # harmonic_num = 0: one harmonic, random phase offset 0
        sine = torch.sin(2 * math.pi * phase) * self.sine_amplitude
        uv = (f0 > 0).to(f0.dtype)
        uv = F.interpolate(uv.transpose(2, 1), scale_factor=float(upp), mode="nearest").transpose(2, 1)
        noise = (uv * self.noise_stddev + (1 - uv) * (self.sine_amplitude / 3)) * eps_sine
        return sine * uv + noise, uv, noise


class SourceModuleHnNSF(nn.Module):
    """Harmonic source: SineGenerator -> Linear(1, 1) -> tanh; (B, L * upp, 1)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.l_sin_gen = SineGenerator(cfg.sr, cfg.sine_amp, cfg.noise_std)
        self.l_linear = nn.Linear(1, 1)
        self.l_tanh = nn.Tanh()

    def forward(self, f0, upp: int, eps_sine):
        sine, _, _ = self.l_sin_gen(f0, upp, eps_sine)
        return self.l_tanh(self.l_linear(sine.to(self.l_linear.weight.dtype))), None, None


def _channels(cfg: SynthConfig) -> list[int]:
    return [cfg.upsample_initial_channel // (2 ** (i + 1)) for i in range(len(cfg.upsample_rates))]


class HiFiGANNSFGenerator(nn.Module):
    """z (B, 192, T), f0 (B, T), g (B, 256, 1), eps_sine (B, T*upp, 1) -> audio (B, 1, T*upp)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.upp = cfg.upp
        self.slope = cfg.lrelu_slope
        self.m_source = SourceModuleHnNSF(cfg)
        self.conv_pre = nn.Conv1d(cfg.inter_channels, cfg.upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.noise_convs = nn.ModuleList()
        channels = _channels(cfg)
        rates = cfg.upsample_rates
        for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes, strict=True)):
            padding = (k - u) // 2 if u % 2 == 0 else u // 2 + u % 2
            self.ups.append(weight_norm(nn.ConvTranspose1d(cfg.upsample_initial_channel // (2 ** i), channels[i],
                                                           k, u, padding=padding, output_padding=u % 2)))
            stride = math.prod(rates[i + 1:]) if i + 1 < len(rates) else 1
            kernel = 1 if stride == 1 else stride * 2 - stride % 2
            self.noise_convs.append(nn.Conv1d(1, channels[i], kernel, stride,
                                              padding=0 if stride == 1 else (kernel - stride) // 2))
        self.resblocks = nn.ModuleList([
            ResBlock(channels[i], k, d, cfg.lrelu_slope) for i in range(len(rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)])
        self.conv_post = nn.Conv1d(channels[-1], 1, 7, 1, padding=3, bias=False)
        self.cond = nn.Conv1d(cfg.gin_channels, cfg.upsample_initial_channel, 1)

    def forward(self, x, f0, g, eps_sine):
        from rvc_common.instrument import tap

        har, _, _ = self.m_source(f0, self.upp, eps_sine)
        har = har.transpose(1, 2)
        x = self.conv_pre(x) + self.cond(g)
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs, strict=True)):
            x = tap(f"synth.upsampled{i}", up(F.leaky_relu(x, self.slope)) + noise_conv(har))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = tap(f"synth.stage{i}", sum(block(x) for block in blocks) / self.num_kernels)
        return torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope 0.01, as the original


class HiFiGANGenerator(nn.Module):
    """No-f0 generator: z (B, 192, T), g (B, 256, 1) -> audio (B, 1, T*upp)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.slope = cfg.lrelu_slope
        self.conv_pre = nn.Conv1d(cfg.inter_channels, cfg.upsample_initial_channel, 7, 1, padding=3)
        channels = _channels(cfg)
        self.ups = nn.ModuleList([
            weight_norm(nn.ConvTranspose1d(cfg.upsample_initial_channel // (2 ** i), channels[i], k, u,
                                           padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))])
        self.resblocks = nn.ModuleList([
            ResBlock(channels[i], k, d, cfg.lrelu_slope) for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)])
        self.conv_post = nn.Conv1d(channels[-1], 1, 7, 1, padding=3, bias=False)
        self.cond = nn.Conv1d(cfg.gin_channels, cfg.upsample_initial_channel, 1)

    def forward(self, x, g):
        from rvc_common.instrument import tap

        x = self.conv_pre(x) + self.cond(g)
        for i, up in enumerate(self.ups):
            x = tap(f"synth.upsampled{i}", up(F.leaky_relu(x, self.slope)))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = tap(f"synth.stage{i}", sum(block(x) for block in blocks) / self.num_kernels)
        return torch.tanh(self.conv_post(F.leaky_relu(x)))
