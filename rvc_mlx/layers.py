"""Shared MLX building blocks whose parameters and maths match their PyTorch counterparts."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class GRU(nn.Module):
    """torch.nn.GRU (1 layer, batch_first, optional bidirectional); (B, T, F) -> ((B, T, D*H), (D, B, H)).

    Parameter names and gate order (r, z, n) are torch's, so checkpoints load without renaming:
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = n + z * (h - n)  (torch's CPU cell form).
    """

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        scale = hidden_size ** -0.5
        for suffix in ("_l0", "_l0_reverse") if bidirectional else ("_l0",):
            setattr(self, "weight_ih" + suffix, mx.random.uniform(-scale, scale, (3 * hidden_size, input_size)))
            setattr(self, "weight_hh" + suffix, mx.random.uniform(-scale, scale, (3 * hidden_size, hidden_size)))
            setattr(self, "bias_ih" + suffix, mx.random.uniform(-scale, scale, (3 * hidden_size,)))
            setattr(self, "bias_hh" + suffix, mx.random.uniform(-scale, scale, (3 * hidden_size,)))

    def _direction(self, x: mx.array, suffix: str, reverse: bool) -> tuple[mx.array, mx.array]:
        H = self.hidden_size
        w_hh = getattr(self, "weight_hh" + suffix).T
        b_hh = getattr(self, "bias_hh" + suffix)
        gi = x @ getattr(self, "weight_ih" + suffix).T + getattr(self, "bias_ih" + suffix)  # (B, T, 3H)
        h = mx.zeros((x.shape[0], H), dtype=x.dtype)
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        outs: list[mx.array] = [None] * x.shape[1]  # type: ignore[list-item]
        for t in steps:
            gh = h @ w_hh + b_hh
            i_t = gi[:, t]
            rz = mx.sigmoid(i_t[:, : 2 * H] + gh[:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            n = mx.tanh(i_t[:, 2 * H:] + r * gh[:, 2 * H:])
            h = n + z * (h - n)
            outs[t] = h
        return mx.stack(outs, axis=1), h

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        out, h = self._direction(x, "_l0", reverse=False)
        if not self.bidirectional:
            return out, h[None]
        out_r, h_r = self._direction(x, "_l0_reverse", reverse=True)
        return mx.concatenate([out, out_r], axis=-1), mx.stack([h, h_r])


class TapConv2d(nn.Conv2d):
    """nn.Conv2d with a (k, 1) kernel, stride 1, on NHWC (B, L, 1, C), computed as k shifted GEMMs.

    MLX's conv runs one GEMM with inner dimension k*C; OpenBLAS's float32 accumulation over k*C = 8192 is ~8x
    less accurate than torch's conv. Summing k GEMMs of inner dimension C is as fast and as accurate as torch.
    """

    def __call__(self, x: mx.array) -> mx.array:
        o, k, kw, c = self.weight.shape
        if kw != 1 or x.shape[2] != 1 or self.stride != (1, 1) or self.padding != (0, 0):
            raise ValueError(f"TapConv2d needs a (k, 1) kernel, width-1 input, stride 1, no padding; got kernel "
                             f"{(k, kw)}, input {x.shape}, stride {self.stride}, padding {self.padding}")
        n = x.shape[1] - k + 1
        rows = x[:, :, 0, :]
        y = rows[:, 0:n] @ self.weight[:, 0, 0, :].T
        for j in range(1, k):
            y = y + rows[:, j:j + n] @ self.weight[:, j, 0, :].T
        if "bias" in self:
            y = y + self.bias
        return y[:, :, None, :]


class Conv1d(nn.Conv1d):
    """nn.Conv1d (stride 1, groups 1) on NLC (B, L, C), computed as k shifted GEMMs of inner dimension C.

    MLX's CPU kernel for dilated convs is 15-60x slower than torch; the shifted-GEMM sum is as fast as torch and
    accurate to torch's level (each GEMM sums over C only)."""

    def __call__(self, x: mx.array) -> mx.array:
        if self.stride != 1 or self.groups != 1:
            return super().__call__(x)
        o, k, c = self.weight.shape
        if self.padding:
            x = mx.pad(x, [(0, 0), (self.padding, self.padding), (0, 0)])
        d = self.dilation
        n = x.shape[1] - d * (k - 1)
        y = x[:, 0:n] @ self.weight[:, 0, :].T
        for j in range(1, k):
            y = y + x[:, j * d:j * d + n] @ self.weight[:, j, :].T
        return y + self.bias if "bias" in self else y


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (dilation 1) on NLC (B, L, C), as one GEMM + phase-wise overlap-add.

    MLX's CPU transposed conv is ~50x slower than torch; here every input frame is multiplied by the whole
    (C_in, K * C_out) kernel once and tap k lands on output phase k % stride, shifted by k // stride frames."""

    def __call__(self, x: mx.array) -> mx.array:
        if self.dilation != 1:
            return super().__call__(x)
        o, k, c = self.weight.shape
        s, p = self.stride, self.padding
        b, t, _ = x.shape
        z = (x @ self.weight.transpose(2, 1, 0).reshape(c, k * o)).reshape(b, t, k, o)
        q_max = -(-k // s)  # taps per phase (ceil)
        phases = []
        for r in range(s):
            acc = mx.zeros((b, t + q_max - 1, o), dtype=z.dtype)
            for q in range(q_max):
                if q * s + r < k:
                    acc = acc + mx.pad(z[:, :, q * s + r], [(0, 0), (q, q_max - 1 - q), (0, 0)])
            phases.append(acc)
        full = mx.stack(phases, axis=2).reshape(b, (t + q_max - 1) * s, o)
        length = (t - 1) * s + k - 2 * p + self.output_padding
        if p + length > full.shape[1]:  # output_padding past the last tap: zeros, as torch
            full = mx.pad(full, [(0, 0), (0, p + length - full.shape[1]), (0, 0)])
        y = full[:, p:p + length]
        return y + self.bias if "bias" in self else y
