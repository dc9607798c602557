"""HuBERT / ContentVec content encoder on MLX, module paths identical to the HF checkpoint keys.

Layout: audio (N,) at 16 kHz; feature extractor channels-last (B, L, 512); encoder (B, T, 768).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rvc_common.audio import check_mono
from rvc_common.config import HUBERT, HubertConfig
from rvc_common.instrument import layer_by_layer, split
from rvc_mlx import cpu_kernels, dispatch, precision
from rvc_mlx.fastmath import GELU, softmax
from rvc_mlx.layers import Conv1d, Linear
from rvc_mlx.norms import LayerNorm
from rvc_mlx.runtime import mx, nn


class GroupNormConvLayer(nn.Module):
    """Conv1d (no bias) -> per-channel GroupNorm over time -> GELU; (B, L, C)."""

    def __init__(self, cfg: HubertConfig, layer_id: int):
        super().__init__()
        c_in = cfg.conv_dim[layer_id - 1] if layer_id > 0 else 1
        c_out = cfg.conv_dim[layer_id]
        self.conv = Conv1d(c_in, c_out, cfg.conv_kernel[layer_id], cfg.conv_stride[layer_id], bias=cfg.conv_bias)
        self.layer_norm = nn.GroupNorm(c_out, c_out, eps=cfg.group_norm_eps, affine=True, pytorch_compatible=True)
        self.activation = GELU()

    def __call__(self, x: mx.array) -> mx.array:
        if layer_by_layer():
            return self.activation(self.layer_norm(self.conv(x)))
        c = self.conv
        mono = x.shape[-1] == 1 and "bias" not in c and c.padding == 0 and c.dilation == 1  # the waveform's conv
        if mono and x.shape[1] >= c.weight.shape[1] and dispatch.vectorised(
                "conv1d+groupnorm+gelu", x, c.weight.shape[0], (c.weight, self.layer_norm.weight)):
            return cpu_kernels.conv_group_norm_gelu(c, self.layer_norm, x)  # (the conv's output is never stored)
        x = c(x)
        if dispatch.vectorised("groupnorm+gelu", x, x.shape[-1], (self.layer_norm.weight,)):
            return cpu_kernels.group_norm_gelu(self.layer_norm, x)
        return self.activation(self.layer_norm(x))


class NoLayerNormConvLayer(nn.Module):
    """Conv1d (no bias) -> GELU; (B, L, C)."""

    def __init__(self, cfg: HubertConfig, layer_id: int):
        super().__init__()
        c_in = cfg.conv_dim[layer_id - 1] if layer_id > 0 else 1
        self.conv = Conv1d(c_in, cfg.conv_dim[layer_id], cfg.conv_kernel[layer_id], cfg.conv_stride[layer_id],
                           bias=cfg.conv_bias)
        self.activation = GELU()

    def __call__(self, x: mx.array) -> mx.array:
        return self.activation(self.conv(x))


class FeatureEncoder(nn.Module):
    """Waveform (B, N) -> (B, frames, 512)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.conv_layers = [GroupNormConvLayer(cfg, 0)] + [NoLayerNormConvLayer(cfg, i)
                                                           for i in range(1, len(cfg.conv_dim))]

    def __call__(self, input_values: mx.array) -> mx.array:
        x = input_values[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm(512) -> Linear(512, 768) -> dropout; (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.layer_norm = LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = Linear(cfg.conv_dim[-1], cfg.hidden_size)
        self.dropout = nn.Dropout(0.0)

    def __call__(self, x: mx.array) -> mx.array:
        return self.dropout(self.projection(self.layer_norm(x)))


class SamePad(nn.Module):
    """Drops the last frame when the positional kernel is even; (B, T, C)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0

    def __call__(self, x: mx.array) -> mx.array:
        return x[:, : -self.num_pad_remove] if self.num_pad_remove else x


class PositionalConvEmbedding(nn.Module):
    """Grouped Conv1d(k=128, pad 64, groups 16) (weight norm folded at conversion) -> SamePad -> GELU; (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.conv = Conv1d(cfg.hidden_size, cfg.hidden_size, cfg.num_conv_pos_embeddings,
                           padding=cfg.num_conv_pos_embeddings // 2, groups=cfg.num_conv_pos_embedding_groups)
        self.padding = SamePad(cfg.num_conv_pos_embeddings)
        self.activation = GELU()

    def __call__(self, x: mx.array) -> mx.array:
        return self.activation(self.padding(self.conv(x)))


class Attention(nn.Module):
    """Multi-head self-attention (scores = (q k^T) * d^-0.5); returns (out, weights: None unless MLX computed the
    whole score matrix); (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        e = cfg.hidden_size
        self.k_proj = Linear(e, e)
        self.v_proj = Linear(e, e)
        self.q_proj = Linear(e, e)
        self.out_proj = Linear(e, e)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array | None]:
        b, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        impl, rows = dispatch.attention(q, self.num_heads, self.head_dim, layer_by_layer())
        if rows < t:
            split("hubert attention query chunks", -(-t // rows))
        if impl == "kernel":
            return self.out_proj(cpu_kernels.attention(q, k, v, self.num_heads, self.scaling, rows)), None
        shape = (b, t, self.num_heads, self.head_dim)
        q, k, v = (a.reshape(shape).transpose(0, 2, 1, 3) for a in (q, k, v))
        if impl == "mlx":
            weights = softmax(q @ k.transpose(0, 1, 3, 2), axis=-1, scale=self.scaling, overwrite=True)
            out = weights @ v
        else:  # query rows in chunks (softmax is per row): one chunk's scores alive at a time, in cache
            weights = None
            k_t = k.transpose(0, 1, 3, 2)
            chunks = []
            for s in range(0, t, rows):
                chunks.append(softmax(q[:, :, s:s + rows] @ k_t, axis=-1, scale=self.scaling, overwrite=True) @ v)
                mx.eval(chunks[-1])  # (a lazy graph would hold every chunk's scores)
            out = mx.concatenate(chunks, axis=2)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, -1)), weights


class FeedForward(nn.Module):
    """Linear(768, 3072) -> GELU -> Linear(3072, 768); (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(0.0)
        self.intermediate_dense = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = GELU()
        self.output_dense = Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_dropout = nn.Dropout(0.0)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Post-LN layer: x = LN(x + Attn(x)); x = FinalLN(x + FFN(x)); (B, T, C)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.dropout = nn.Dropout(0.0)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        attn, _ = self.attention(x)
        x = self.layer_norm(x, self.dropout(attn))  # LayerNorm(x + attn)
        return self.final_layer_norm(x, self.feed_forward(x))


class Encoder(nn.Module):
    """x + PosConv(x) -> LayerNorm -> layers; returns every hidden state (input of layer 0, each output)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(0.0)
        self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(self, x: mx.array, n_layers: int | None = None) -> list[mx.array]:
        x = self.dropout(self.layer_norm(x, self.pos_conv_embed(x)))  # LayerNorm(x + pos_conv(x))
        hidden = [x]
        for layer in self.layers[:n_layers]:
            x = layer(x)
            hidden.append(x)
        return hidden


class HubertModel(nn.Module):
    """ContentVec: waveform (B, N) -> hidden states (B, T, 768), T = floor((N - 400) / 320) + 1."""

    # Modules the original keeps in float32 in half mode (`precision`). Its attention softmax also runs in
    # float32 (fairseq's utils.softmax): fastmath.softmax accumulates half inputs in float32 (precise=True).
    FLOAT32 = {
        "feature_extractor.conv_layers.0.layer_norm":
            "fairseq's Fp32GroupNorm: per-channel statistics over every frame of the first conv's output, in float32",
    }

    def __init__(self, cfg: HubertConfig = HUBERT, final_proj: bool = True):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)
        if final_proj:  # absent from HuBERT bases without RVC v1's projection (e.g. Applio's custom embedders)
            self.final_proj = Linear(cfg.hidden_size, cfg.classifier_proj_size)

    @property
    def has_final_proj(self) -> bool:
        return "final_proj" in self

    def __call__(self, input_values: mx.array, n_layers: int | None = None) -> list[mx.array]:
        return self.encoder(self.feature_projection(self.feature_extractor(input_values)), n_layers)


class HuBERT:
    """Content features: audio (N,) at 16 kHz -> (frames, 768), or (frames, 256) through final_proj."""

    def __init__(self, model: HubertModel, source: str = "HuBERT"):
        self.model = model
        self.model.eval()
        self.cfg = model.cfg
        self.source = source  # named in errors

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str | None = None,
                        plan: precision.Plan | None = None) -> "HuBERT":
        """A ContentVec directory (config.json + pytorch_model.bin | model.safetensors) or a fairseq `.pt`
        (both converted once and cached), or a converted `.safetensors`; with final_proj when the file has one.
        `dtype` (float16, bfloat16) runs it with the committed plan for that dtype, `plan` with that one."""
        from rvc_mlx.checkpoints import convert_contentvec, load_mlx_weights, mlx_weight_shape, read_mlx_metadata

        path = Path(path)
        converted = path if path.suffix == ".safetensors" else convert_contentvec(path)
        cfg = HubertConfig.from_hf(json.loads(read_mlx_metadata(converted, "hubert")["config"]), str(converted))
        model = HubertModel(cfg, final_proj=mlx_weight_shape(converted, "hubert", "final_proj.weight") is not None)
        load_mlx_weights(model, converted, component="hubert")
        precision.configure(model, "hubert", dtype, plan)
        return cls(model, source=str(path))

    @property
    def has_final_proj(self) -> bool:
        return self.model.has_final_proj

    def require_final_proj(self) -> None:
        """Raise ValueError (one line) when this HuBERT cannot give RVC v1's 256-d final_proj features."""
        if not self.has_final_proj:
            raise ValueError(f"{self.source}: this HuBERT has no final_proj, which RVC v1 models need; use a "
                             "ContentVec/HuBERT with final_proj or a v2 model")

    def hidden_states(self, audio_16k: np.ndarray, n_layers: int | None = None) -> list[mx.array]:
        audio = check_mono(audio_16k, self.cfg.receptive_field, "HuBERT", self.cfg.sample_rate)
        return self.model(mx.array(audio)[None], n_layers)

    def features_mx(self, audio_16k: np.ndarray, layer: int = 12, final_proj: bool = False) -> mx.array:
        if not 0 <= layer <= self.cfg.num_hidden_layers:
            raise ValueError(f"layer must be in 0..{self.cfg.num_hidden_layers}, got {layer}")
        if final_proj:
            self.require_final_proj()  # before any compute
        x = self.hidden_states(audio_16k, n_layers=layer)[layer]
        if final_proj:
            x = self.model.final_proj(x)
        return x[0]

    def features(self, audio_16k: np.ndarray, layer: int = 12, final_proj: bool = False) -> np.ndarray:
        out = self.features_mx(audio_16k, layer, final_proj)
        mx.eval(out)
        return precision.host(out)
