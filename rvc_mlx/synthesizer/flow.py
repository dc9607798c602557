"""Residual coupling flow on MLX (weight norm folded at conversion); Flips stay in the list; (B, T, C)."""

from __future__ import annotations

from rvc_common.config import SynthConfig
from rvc_mlx.fastmath import sigmoid, tanh
from rvc_mlx.layers import Conv1d
from rvc_mlx.runtime import mx, nn


class WaveNet(nn.Module):
    """Gated dilated conv stack with global conditioning and skip sum; (B, T, H)."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden_channels = hidden
        self.n_layers = n_layers
        self.cond_layer = Conv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = []
        self.res_skip_layers = []
        self.drop = nn.Dropout(0.0)
        for i in range(n_layers):
            d = dilation_rate ** i
            self.in_layers.append(Conv1d(hidden, 2 * hidden, kernel_size, dilation=d,
                                         padding=(kernel_size * d - d) // 2))
            self.res_skip_layers.append(Conv1d(hidden, hidden if i == n_layers - 1 else 2 * hidden, 1))

    def __call__(self, x: mx.array, x_mask: mx.array, g: mx.array) -> mx.array:
        h = self.hidden_channels
        output = mx.zeros_like(x)
        g = self.cond_layer(g)
        for i in range(self.n_layers):
            in_act = self.in_layers[i](x) + g[..., i * 2 * h:(i + 1) * 2 * h]
            acts = self.drop(tanh(in_act[..., :h]) * sigmoid(in_act[..., h:]))
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[..., :h]) * x_mask
                output = output + res_skip[..., h:]
            else:
                output = output + res_skip
        return output * x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only coupling, reverse direction: x1 = (x1 - post(WaveNet(pre(x0)))) * mask; (B, T, C)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.half_channels = cfg.inter_channels // 2
        self.pre = Conv1d(self.half_channels, cfg.hidden_channels, 1)
        self.enc = WaveNet(cfg.hidden_channels, cfg.flow_kernel, cfg.flow_dilation, cfg.flow_layers,
                           cfg.gin_channels)
        self.post = Conv1d(cfg.hidden_channels, self.half_channels, 1)

    def __call__(self, x: mx.array, x_mask: mx.array, g=None, reverse=True) -> mx.array:
        x0, x1 = x[..., : self.half_channels], x[..., self.half_channels:]
        m = self.post(self.enc(self.pre(x0) * x_mask, x_mask, g)) * x_mask
        return mx.concatenate([x0, (x1 - m) * x_mask], axis=-1)  # exp(-logs) = 1 (mean_only)


class Flip(nn.Module):
    """Reverses the channel axis; (B, T, C)."""

    def __call__(self, x: mx.array, *args, reverse=True, **kwargs) -> mx.array:
        return x[..., ::-1]


class ResidualCouplingBlock(nn.Module):
    """flows = [L0, Flip, ..., L3, Flip], applied in reverse order at inference; (B, T, C)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.flows = []
        for _ in range(cfg.n_flows):
            self.flows += [ResidualCouplingLayer(cfg), Flip()]

    def __call__(self, x: mx.array, x_mask: mx.array, g=None, reverse=True) -> mx.array:
        for flow in reversed(self.flows):
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x
