"""Relative-position multi-head attention, conv FFN and channel LayerNorm on MLX; tensors (B, T, C)."""

from __future__ import annotations

import math

from rvc_mlx.fastmath import softmax
from rvc_mlx.layers import Conv1d
from rvc_mlx.runtime import mx, nn


class LayerNorm(nn.Module):
    """LayerNorm over channels with `gamma`/`beta` (the original's names); (B, T, C)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = mx.ones((channels,))
        self.beta = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.gamma, self.beta, self.eps)


class MultiHeadAttention(nn.Module):
    """Self-attention with shared relative key/value embeddings over a +-window; (B, T, C)."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, window_size: int):
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = Conv1d(channels, channels, 1)
        self.conv_k = Conv1d(channels, channels, 1)
        self.conv_v = Conv1d(channels, channels, 1)
        self.conv_o = Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(0.0)
        self.emb_rel_k = mx.zeros((1, 2 * window_size + 1, self.k_channels))
        self.emb_rel_v = mx.zeros((1, 2 * window_size + 1, self.k_channels))

    def __call__(self, x: mx.array, c: mx.array, attn_mask=None) -> mx.array:
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        return self.conv_o(self.attention(q, k, v, attn_mask))

    def attention(self, query, key, value, mask):
        b, t, d = query.shape
        heads = lambda a: a.reshape(b, t, self.n_heads, self.k_channels).transpose(0, 2, 1, 3)  # noqa: E731
        query, key, value = heads(query), heads(key), heads(value)
        q = query / math.sqrt(self.k_channels)
        scores = q @ key.transpose(0, 1, 3, 2)
        w = self.window_size
        if t > w + 1:
            # The original pads the (2w+1) embeddings with zeros to 2t-1 relative positions; the products with those
            # zeros are exact zeros, so only the +-w band is computed and moved into place: O(t w), not O(t^2) GEMMs.
            scores = scores + self._band_to_absolute(q @ self.emb_rel_k[None].transpose(0, 1, 3, 2))
        else:
            rel_k = self._relative_embeddings(self.emb_rel_k, t)
            scores = scores + self._relative_to_absolute(q @ rel_k[None].transpose(0, 1, 3, 2))
        if mask is not None:
            scores = mx.where(mask == 0, -1e4, scores)
        p_attn = self.drop(softmax(scores, axis=-1))
        if t > w + 1:
            output = p_attn @ value + self._absolute_to_band(p_attn, w) @ self.emb_rel_v[None]
        else:
            rel_v = self._relative_embeddings(self.emb_rel_v, t)
            output = p_attn @ value + self._absolute_to_relative(p_attn) @ rel_v[None]
        return output.transpose(0, 2, 1, 3).reshape(b, t, d)

    @staticmethod
    def _band_to_absolute(x):
        """(B, H, t, 2w+1) band (entry k of row i is column i + k - w) -> (B, H, t, t), zero off the band."""
        batch, heads, length, width = x.shape
        w = width // 2
        # rows of length t + 2w + 1, re-read as rows of length t + 2w: row i shifts right by i
        x = mx.pad(x, [(0, 0), (0, 0), (0, 0), (0, length)]).reshape(batch, heads, length * (length + width))
        x = x[:, :, :length * (length + width - 1)].reshape(batch, heads, length, length + width - 1)
        return x[:, :, :, w:w + length]

    @staticmethod
    def _absolute_to_band(x, w):
        """(B, H, t, t) -> (B, H, t, 2w+1): entry k of row i is x[i, i + k - w] (0 outside the matrix)."""
        batch, heads, length, _ = x.shape
        x = mx.pad(x, [(0, 0), (0, 0), (0, 0), (w, w)]).reshape(batch, heads, length * (length + 2 * w))
        x = mx.pad(x, [(0, 0), (0, 0), (0, length)])  # rows of length t + 2w + 1: row i shifts left by i
        return x.reshape(batch, heads, length, length + 2 * w + 1)[:, :, :, :2 * w + 1]

    def _relative_embeddings(self, emb, length):
        pad = max(length - (self.window_size + 1), 0)
        start = max((self.window_size + 1) - length, 0)
        if pad > 0:
            emb = mx.pad(emb, [(0, 0), (pad, pad), (0, 0)])
        return emb[:, start:start + 2 * length - 1]

    @staticmethod
    def _relative_to_absolute(x):
        batch, heads, length, _ = x.shape
        x = mx.pad(x, [(0, 0), (0, 0), (0, 0), (0, 1)]).reshape(batch, heads, length * 2 * length)
        x = mx.pad(x, [(0, 0), (0, 0), (0, length - 1)])
        return x.reshape(batch, heads, length + 1, 2 * length - 1)[:, :, :length, length - 1:]

    @staticmethod
    def _absolute_to_relative(x):
        batch, heads, length, _ = x.shape
        x = mx.pad(x, [(0, 0), (0, 0), (0, 0), (0, length - 1)])
        x = x.reshape(batch, heads, length ** 2 + length * (length - 1))
        x = mx.pad(x, [(0, 0), (0, 0), (length, 0)])
        return x.reshape(batch, heads, length, 2 * length)[:, :, :, 1:]


class FFN(nn.Module):
    """Conv1d(k) -> ReLU -> Conv1d(k), "same" zero padding, input masked before each conv; (B, T, C)."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.pad = (kernel_size - 1) // 2
        self.conv_1 = Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(0.0)

    def __call__(self, x: mx.array, x_mask: mx.array) -> mx.array:
        p = [(0, 0), (self.pad, self.pad), (0, 0)]
        x = self.drop(nn.relu(self.conv_1(mx.pad(x * x_mask, p))))
        return self.conv_2(mx.pad(x * x_mask, p)) * x_mask
