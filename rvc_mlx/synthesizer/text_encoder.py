"""TextEncoder on MLX: phone features + pitch embedding -> prior (m_p, logs_p); (B, T, C)."""

from __future__ import annotations

import math

from rvc_common.config import SynthConfig
from rvc_common.instrument import output
from rvc_mlx import dispatch
from rvc_mlx.layers import Conv1d
from rvc_mlx.runtime import mx, nn
from rvc_mlx.synthesizer.attentions import FFN, LayerNorm, MultiHeadAttention


class Encoder(nn.Module):
    """Post-LN relative-attention transformer; (B, T, C)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        h, n = cfg.hidden_channels, cfg.n_layers
        self.drop = nn.Dropout(0.0)
        self.attn_layers = [MultiHeadAttention(h, h, cfg.n_heads, cfg.window_size) for _ in range(n)]
        self.norm_layers_1 = [LayerNorm(h) for _ in range(n)]
        self.ffn_layers = [FFN(h, h, cfg.filter_channels, cfg.kernel_size) for _ in range(n)]
        self.norm_layers_2 = [LayerNorm(h) for _ in range(n)]

    def __call__(self, x: mx.array, x_mask: mx.array) -> mx.array:
        attn_mask = x_mask.transpose(0, 2, 1)[:, :, :, None] * x_mask.transpose(0, 2, 1)[:, :, None, :]
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers,
                                           self.norm_layers_2, strict=True):
            x = norm1(x + self.drop(attn(x, x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class TextEncoder(nn.Module):
    """phone (B, T, 768|256), pitch (B, T) int -> (m_p, logs_p, x_mask): (B, T, 192) x 2, (B, T, 1)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.hidden_channels = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.emb_phone = nn.Linear(cfg.text_enc_hidden_dim, cfg.hidden_channels)
        self.lrelu = nn.LeakyReLU(0.1)
        if cfg.use_f0:
            self.emb_pitch = nn.Embedding(256, cfg.hidden_channels)
        self.encoder = Encoder(cfg)
        self.proj = Conv1d(cfg.hidden_channels, cfg.inter_channels * 2, 1)

    def __call__(self, phone: mx.array, pitch, lengths: mx.array):
        x = self.emb_phone(phone)
        if pitch is not None and "emb_pitch" in self:
            x = x + self.emb_pitch(pitch)
        x = self.lrelu(x * math.sqrt(self.hidden_channels))
        x_mask = (mx.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None].astype(x.dtype)
        x = self.encoder(x, x_mask)
        stats = self._project(x) * x_mask
        return stats[..., : self.out_channels], stats[..., self.out_channels:], x_mask

    def _project(self, x: mx.array) -> mx.array:
        """proj(x), accumulated in float64 where dispatch says so. logs_p is exponentiated (z_p = m_p + exp(logs_p)
        * eps * 0.667), so its absolute error reaches z_p multiplied by up to ~1e2: a float32 sum's few ulps at
        the one largest element would decide z_p's error, and the flow's after it."""
        if not dispatch.float64_sum(x, "synth prior projection", (self.proj.weight,)):
            return self.proj(x)
        w = self.proj.weight[:, 0, :].astype(mx.float64)
        y = x.astype(mx.float64) @ w.T + self.proj.bias.astype(mx.float64)
        return output(self.proj, y.astype(x.dtype))
