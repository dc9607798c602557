"""Relative-position multi-head attention, conv FFN and channel LayerNorm (rvc/lib/algorithm/attentions.py,
normalization.py); tensors (B, C, T)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    """LayerNorm over channels with parameters `gamma`/`beta`; (B, C, T)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (x.size(-1),), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class MultiHeadAttention(nn.Module):
    """Self-attention with shared relative key/value embeddings over a +-window; (B, C, T)."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, window_size: int):
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(0.0)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window_size + 1, self.k_channels))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window_size + 1, self.k_channels))

    def forward(self, x, c, attn_mask=None):
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        return self.conv_o(self.attention(q, k, v, attn_mask))

    def attention(self, query, key, value, mask):
        b, d, t_s, t_t = (*key.size(), query.size(2))
        query = query.view(b, self.n_heads, self.k_channels, t_t).transpose(2, 3)
        key = key.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)
        value = value.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)
        scores = torch.matmul(query / math.sqrt(self.k_channels), key.transpose(-2, -1))
        rel_k = self._relative_embeddings(self.emb_rel_k, t_s)
        rel_logits = torch.matmul(query / math.sqrt(self.k_channels), rel_k.unsqueeze(0).transpose(-2, -1))
        scores = scores + self._relative_to_absolute(rel_logits)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e4)
        p_attn = self.drop(torch.softmax(scores, dim=-1))
        output = torch.matmul(p_attn, value)
        rel_v = self._relative_embeddings(self.emb_rel_v, t_s)
        output = output + torch.matmul(self._absolute_to_relative(p_attn), rel_v.unsqueeze(0))
        return output.transpose(2, 3).contiguous().view(b, d, t_t)

    def _relative_embeddings(self, emb, length):
        pad = max(length - (self.window_size + 1), 0)
        start = max((self.window_size + 1) - length, 0)
        if pad > 0:
            emb = F.pad(emb, (0, 0, pad, pad))
        return emb[:, start:start + 2 * length - 1]

    @staticmethod
    def _relative_to_absolute(x):
        batch, heads, length, _ = x.size()
        x = F.pad(x, (0, 1))
        x = F.pad(x.view(batch, heads, length * 2 * length), (0, length - 1))
        return x.view(batch, heads, length + 1, 2 * length - 1)[:, :, :length, length - 1:]

    @staticmethod
    def _absolute_to_relative(x):
        batch, heads, length, _ = x.size()
        x = F.pad(x, (0, length - 1))
        x = F.pad(x.view(batch, heads, length ** 2 + length * (length - 1)), (length, 0))
        return x.view(batch, heads, length, 2 * length)[:, :, :, 1:]


class FFN(nn.Module):
    """Conv1d(k) -> ReLU -> Conv1d(k) with "same" zero padding, input masked before each conv; (B, C, T)."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.pad = (kernel_size - 1) // 2
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(0.0)

    def forward(self, x, x_mask):
        x = self.conv_1(F.pad(x * x_mask, (self.pad, self.pad)))
        x = self.drop(torch.relu(x))
        x = self.conv_2(F.pad(x * x_mask, (self.pad, self.pad)))
        return x * x_mask
