"""Normalisation layers whose MLX form is slow on the Linux CPU build: LayerNorm on the C++ kernel where
`rvc_mlx.dispatch` says (MLX's composed LayerNorm ran 15x slower than torch's on HuBERT's 768 channels)."""

from __future__ import annotations

from rvc_mlx import cpu_kernels, dispatch
from rvc_mlx.runtime import mx, nn


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis (..., C), optionally of a residual sum: layer_norm(x, residual)."""

    def __call__(self, x: mx.array, residual: mx.array | None = None) -> mx.array:
        """LayerNorm(x + residual) (residual optional, added as MLX adds): one kernel pass per row when float32 on
        the CPU with C in whole vectors, else MLX's add and LayerNorm."""
        op = "layernorm" if residual is None else "add+layernorm"
        operands = (self.weight, self.bias) + (() if residual is None else (residual,))
        if "bias" in self and dispatch.fused(x, op, x.shape[-1], operands):
            return cpu_kernels.layer_norm(self, x, residual)
        return super().__call__(x if residual is None else x + residual)
