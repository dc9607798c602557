"""Residual coupling flow (rvc/lib/algorithm/residuals.py, modules.py): WaveNet-conditioned mean-only coupling
layers interleaved with channel Flips; (B, C, T)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from rvc_common.config import SynthConfig


class WaveNet(nn.Module):
    """Gated dilated conv stack with global conditioning (cond_layer) and skip sum; (B, H, T)."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden_channels = hidden
        self.n_layers = n_layers
        self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1), name="weight")
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(0.0)
        for i in range(n_layers):
            d = dilation_rate ** i
            self.in_layers.append(weight_norm(nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=d,
                                                        padding=(kernel_size * d - d) // 2), name="weight"))
            res_skip = hidden if i == n_layers - 1 else 2 * hidden
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden, res_skip, 1), name="weight"))

    def forward(self, x, x_mask, g):
        h = self.hidden_channels
        output = torch.zeros_like(x)
        g = self.cond_layer(g)
        for i in range(self.n_layers):
            in_act = self.in_layers[i](x) + g[:, i * 2 * h:(i + 1) * 2 * h, :]
            acts = self.drop(torch.tanh(in_act[:, :h]) * torch.sigmoid(in_act[:, h:]))
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: x1 -= post(WaveNet(pre(x0))) in reverse; (B, C, T)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.half_channels = cfg.inter_channels // 2
        self.pre = nn.Conv1d(self.half_channels, cfg.hidden_channels, 1)
        self.enc = WaveNet(cfg.hidden_channels, cfg.flow_kernel, cfg.flow_dilation, cfg.flow_layers,
                           cfg.gin_channels)
        self.post = nn.Conv1d(cfg.hidden_channels, self.half_channels, 1)

    def forward(self, x, x_mask, g=None, reverse=True):
        if not reverse:
            raise NotImplementedError("inference only: the forward (training) direction is not part of the twin")
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.enc(self.pre(x0) * x_mask, x_mask, g)
        m = self.post(h) * x_mask
        x1 = (x1 - m) * torch.exp(-torch.zeros_like(m)) * x_mask  # logs = 0 (mean_only), as the original
        return torch.cat([x0, x1], 1)


class Flip(nn.Module):
    """Reverses the channel axis (torch.flip(x, [1])); (B, C, T)."""

    def forward(self, x, *args, reverse=True, **kwargs):
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """flows = [L0, Flip, L1, Flip, L2, Flip, L3, Flip], applied in reverse order at inference; (B, C, T)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(cfg.n_flows):
            self.flows.append(ResidualCouplingLayer(cfg))
            self.flows.append(Flip())

    def forward(self, x, x_mask, g=None, reverse=True):
        for flow in reversed(self.flows):
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x
