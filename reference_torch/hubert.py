"""PyTorch twin of the ContentVec/HuBERT content encoder as RVC runs it (transformers `HubertModel` with
`final_proj`, post-LN encoder, eager attention), written module for module with the same state-dict keys.

Layout is PyTorch's: feature-extractor activations (B, 512, L); projection and encoder (B, T, 768).
`dtype=torch.float64` gives the float64 oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from rvc_common.audio import check_mono
from rvc_common.config import HUBERT, HubertConfig


class GroupNormConvLayer(nn.Module):
    """Conv1d (no bias) -> GroupNorm(512 groups, i.e. per channel over time) -> GELU; (B, C, L)."""

    def __init__(self, cfg: HubertConfig, layer_id: int):
        super().__init__()
        c_in = cfg.conv_dim[layer_id - 1] if layer_id > 0 else 1
        c_out = cfg.conv_dim[layer_id]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[layer_id], cfg.conv_stride[layer_id], bias=cfg.conv_bias)
        self.layer_norm = nn.GroupNorm(c_out, c_out, eps=cfg.group_norm_eps, affine=True)
        self.activation = nn.GELU()

    def forward(self, x):
        return self.activation(self.layer_norm(self.conv(x)))


class NoLayerNormConvLayer(nn.Module):
    """Conv1d (no bias) -> GELU; (B, C, L)."""

    def __init__(self, cfg: HubertConfig, layer_id: int):
        super().__init__()
        c_in = cfg.conv_dim[layer_id - 1] if layer_id > 0 else 1
        self.conv = nn.Conv1d(c_in, cfg.conv_dim[layer_id], cfg.conv_kernel[layer_id], cfg.conv_stride[layer_id],
                              bias=cfg.conv_bias)
        self.activation = nn.GELU()

    def forward(self, x):
        return self.activation(self.conv(x))


class FeatureEncoder(nn.Module):
    """Waveform (B, N) -> (B, 512, frames): 7 strided convs, GroupNorm on the first."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(
            [GroupNormConvLayer(cfg, 0)] + [NoLayerNormConvLayer(cfg, i) for i in range(1, len(cfg.conv_dim))]
        )

    def forward(self, input_values):
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm(512) -> Linear(512, 768) -> dropout; (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        return self.dropout(self.projection(self.layer_norm(x)))


class SamePad(nn.Module):
    """Drops the last frame when the positional kernel is even (padding k//2 on both sides adds one); (B, C, T)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, : -self.num_pad_remove] if self.num_pad_remove else x


class PositionalConvEmbedding(nn.Module):
    """Grouped Conv1d(768, 768, k=128, pad 64, groups 16) with weight norm over dim 2 -> SamePad -> GELU;
    (B, T, C) in and out."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, cfg.num_conv_pos_embeddings,
                         padding=cfg.num_conv_pos_embeddings // 2, groups=cfg.num_conv_pos_embedding_groups)
        # legacy weight_g/weight_v keys are mapped to parametrizations.weight.original0/1 by torch's load hook
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.padding = SamePad(cfg.num_conv_pos_embeddings)
        self.activation = nn.GELU()

    def forward(self, x):
        x = self.activation(self.padding(self.conv(x.transpose(1, 2))))
        return x.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, eager maths (scores = (q k^T) * d^-0.5); returns (out, weights); (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        e = cfg.hidden_size
        self.k_proj = nn.Linear(e, e)
        self.v_proj = nn.Linear(e, e)
        self.q_proj = nn.Linear(e, e)
        self.out_proj = nn.Linear(e, e)

    def forward(self, x):
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.scaling, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(out), weights


class FeedForward(nn.Module):
    """Linear(768, 3072) -> GELU -> Linear(3072, 768); (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(0.0)
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = nn.GELU()
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_dropout = nn.Dropout(0.0)

    def forward(self, x):
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + Attn(x)); x = FinalLN(x + FFN(x)); (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.dropout = nn.Dropout(0.0)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        attn, _ = self.attention(x)
        x = self.layer_norm(x + self.dropout(attn))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """x + PosConv(x) -> LayerNorm -> 12 layers; returns every hidden state (input of layer 0, then each
    layer's output), as transformers' `hidden_states`; (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x, n_layers: int | None = None):
        x = self.dropout(self.layer_norm(x + self.pos_conv_embed(x)))
        hidden = [x]
        for layer in self.layers[:n_layers]:
            x = layer(x)
            hidden.append(x)
        return hidden


class HubertModel(nn.Module):
    """ContentVec: waveform (B, N) -> hidden states (B, T, 768), T = floor((N - 400) / 320) + 1."""

    def __init__(self, cfg: HubertConfig = HUBERT):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.masked_spec_embed = nn.Parameter(torch.zeros(cfg.hidden_size))  # training-only (SpecAugment)
        self.encoder = Encoder(cfg)
        self.final_proj = nn.Linear(cfg.hidden_size, cfg.classifier_proj_size)

    def forward(self, input_values, n_layers: int | None = None):
        x = self.feature_extractor(input_values).transpose(1, 2)
        return self.encoder(self.feature_projection(x), n_layers)


class HuBERT:
    """Twin predictor: audio (N,) at 16 kHz -> features (frames, 768 | 256)."""

    def __init__(self, model: HubertModel, dtype: torch.dtype = torch.float32):
        self.model = model.to(dtype).eval()
        self.cfg = model.cfg
        self.dtype = dtype

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "HuBERT":
        """A ContentVec directory (transformers' layout): config.json + model.safetensors or pytorch_model.bin."""
        path = Path(path)
        cfg = HubertConfig.from_hf(json.loads((path / "config.json").read_text()), str(path / "config.json"))
        if (path / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(path / "model.safetensors"))
        else:
            state = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        model = HubertModel(cfg)
        model.load_state_dict(state, strict=True)
        return cls(model, dtype)

    @torch.no_grad()
    def hidden_states(self, audio_16k: np.ndarray, n_layers: int | None = None) -> list[torch.Tensor]:
        audio = check_mono(audio_16k, self.cfg.receptive_field, "HuBERT", self.cfg.sample_rate)
        return self.model(torch.from_numpy(audio).to(self.dtype)[None], n_layers)

    @torch.no_grad()
    def features(self, audio_16k: np.ndarray, layer: int = 12, final_proj: bool = False) -> np.ndarray:
        if not 0 <= layer <= self.cfg.num_hidden_layers:
            raise ValueError(f"layer must be in 0..{self.cfg.num_hidden_layers}, got {layer}")
        x = self.hidden_states(audio_16k, n_layers=layer)[layer]
        if final_proj:
            x = self.model.final_proj(x)
        return x[0].cpu().numpy()
