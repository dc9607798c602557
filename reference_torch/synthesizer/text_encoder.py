"""TextEncoder (rvc/lib/algorithm/encoders.py): phone features + pitch embedding -> prior (m_p, logs_p)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from reference_torch.synthesizer.attentions import FFN, LayerNorm, MultiHeadAttention
from rvc_common.config import SynthConfig


class Encoder(nn.Module):
    """Post-LN relative-attention transformer; (B, C, T)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        h, n = cfg.hidden_channels, cfg.n_layers
        self.drop = nn.Dropout(0.0)
        self.attn_layers = nn.ModuleList([MultiHeadAttention(h, h, cfg.n_heads, cfg.window_size) for _ in range(n)])
        self.norm_layers_1 = nn.ModuleList([LayerNorm(h) for _ in range(n)])
        self.ffn_layers = nn.ModuleList([FFN(h, h, cfg.filter_channels, cfg.kernel_size) for _ in range(n)])
        self.norm_layers_2 = nn.ModuleList([LayerNorm(h) for _ in range(n)])

    def forward(self, x, x_mask):
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers,
                                           self.norm_layers_2, strict=True):
            x = norm1(x + self.drop(attn(x, x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class TextEncoder(nn.Module):
    """phone (B, T, 768|256), pitch (B, T) int -> (m_p, logs_p, x_mask), each (B, C, T)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.hidden_channels = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.emb_phone = nn.Linear(cfg.text_enc_hidden_dim, cfg.hidden_channels)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        if cfg.use_f0:
            self.emb_pitch = nn.Embedding(256, cfg.hidden_channels)
        self.encoder = Encoder(cfg)
        self.proj = nn.Conv1d(cfg.hidden_channels, cfg.inter_channels * 2, 1)

    def forward(self, phone, pitch, lengths):
        x = self.emb_phone(phone)
        if pitch is not None and hasattr(self, "emb_pitch"):
            x += self.emb_pitch(pitch)
        x *= math.sqrt(self.hidden_channels)
        x = self.lrelu(x).transpose(1, -1)  # (B, H, T)
        x_mask = (torch.arange(x.size(2))[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, x_mask
