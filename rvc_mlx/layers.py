"""Shared MLX building blocks whose parameters and maths match their PyTorch counterparts."""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
from threadpoolctl import threadpool_limits

from rvc_common.instrument import profiled
from rvc_mlx import cpu_kernels, dispatch, fastmath, host_gemm
from rvc_mlx.precision import host
from rvc_mlx.runtime import mx, nn


class Linear(nn.Linear):
    """torch.nn.Linear (weight (out, in), bias (out)); (..., in) -> (..., out). `dispatch.linear` chooses the GEMM:
    the kernel's (`cpu_kernels.linear`, weights packed once) or MLX's addmm."""

    def __call__(self, x: mx.array) -> mx.array:
        if dispatch.linear(x, self.weight) == "kernel":
            return cpu_kernels.linear(self, x)
        return super().__call__(x)


class GRU(nn.Module):
    """torch.nn.GRU (1 layer, batch_first, optional bidirectional); (B, T, F) -> ((B, T, D*H), (D, B, H)).

    Parameter names and gate order (r, z, n) are torch's, so checkpoints load without renaming:
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = n + z * (h - n)  (torch's CPU cell form).
    `dispatch.gru` chooses where the recurrence runs: the kernel (`cpu_kernels.gru_scan`, both directions in
    parallel), numpy on the host (`_gru_scan_host`, the CPU fallback) or compiled MLX steps (other devices).
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

    def _input_projection(self, x: mx.array, suffix: str) -> mx.array:
        return x @ getattr(self, "weight_ih" + suffix).T + getattr(self, "bias_ih" + suffix)  # (B, T, 3H)

    def _direction(self, x: mx.array, suffix: str, reverse: bool, impl: str) -> tuple[mx.array, mx.array]:
        H = self.hidden_size
        w_hh = getattr(self, "weight_hh" + suffix).T
        b_hh = getattr(self, "bias_hh" + suffix)
        gi = self._input_projection(x, suffix)
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        if impl == "gemm numpy scan":  # in float32 whatever x's dtype (numpy has no bfloat16), the result in x's
            out, h = _gru_scan_host(host(gi), host(w_hh), host(b_hh), steps)
            return _in(mx.array(out), x.dtype), _in(mx.array(h), x.dtype)
        h = mx.zeros((x.shape[0], H), dtype=x.dtype)
        outs: list[mx.array] = [None] * x.shape[1]  # type: ignore[list-item]
        for t in steps:
            h = _gru_step(gi[:, t], h, w_hh, b_hh)
            outs[t] = h
        return mx.stack(outs, axis=1), h

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """(output (B, T, D*H), final states (D, B, H)) by the path dispatch.TABLE["gru"] chooses."""
        impl = dispatch.gru(x)
        return self._kernel(x) if impl == "kernel" else self._steps(x, impl)

    def _kernel(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """The CPU kernel's scan: both directions at once, on a core each."""
        suffixes = ("_l0", "_l0_reverse") if self.bidirectional else ("_l0",)
        gis = [self._input_projection(x, s) for s in suffixes]
        outs, hs = cpu_kernels.gru_scan(gis, [getattr(self, "weight_hh" + s) for s in suffixes],
                                        [getattr(self, "bias_hh" + s) for s in suffixes])
        return mx.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0], mx.stack(hs)

    def _steps(self, x: mx.array, impl: str) -> tuple[mx.array, mx.array]:
        """Each direction step by step: numpy on the host, or compiled MLX steps."""
        out, h = self._direction(x, "_l0", reverse=False, impl=impl)
        if not self.bidirectional:
            return out, h[None]
        out_r, h_r = self._direction(x, "_l0_reverse", reverse=True, impl=impl)
        return mx.concatenate([out, out_r], axis=-1), mx.stack([h, h_r])


def _in(x: mx.array, dtype: mx.Dtype) -> mx.array:
    return x if x.dtype == dtype else x.astype(dtype)


@mx.compile
def _gru_step(i_t: mx.array, h: mx.array, w_hh: mx.array, b_hh: mx.array) -> mx.array:
    # compiled: one fused kernel per step instead of ~12 tiny ops (per-op overhead dominates at (B, 3H))
    H = h.shape[-1]
    gh = h @ w_hh + b_hh
    rz = mx.sigmoid(i_t[:, : 2 * H] + gh[:, : 2 * H])
    r, z = rz[:, :H], rz[:, H:]
    n = mx.tanh(i_t[:, 2 * H:] + r * gh[:, 2 * H:])
    return n + z * (h - n)


def _gru_scan_host(gi: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray, steps: range) -> tuple[np.ndarray, np.ndarray]:
    """The recurrence on the CPU device, in numpy float32: each step is ~10 ops on (B, 3H) vectors, where MLX's
    per-op dispatch costs several times torch's whole step; numpy's SIMD exp/tanh keep torch's accuracy."""
    b, t_len, h3 = gi.shape
    H = h3 // 3
    h = np.zeros((b, H), dtype=np.float32)
    out = np.empty((b, t_len, H), dtype=np.float32)
    # one BLAS thread: numpy's OpenBLAS would wake its worker for every (B, H) x (H, 3H) step, and the worker then
    # spins on sched_yield after it, taking a core from the next ops (the next RMVPE chunk's convs)
    with np.errstate(over="ignore"), threadpool_limits(limits=1, user_api="blas"):
        for t in steps:
            h = _gru_host_step(gi[:, t], h, w_hh, b_hh, H)
            out[:, t] = h
    return out, h


def _gru_host_step(i_t: np.ndarray, h: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray, H: int) -> np.ndarray:
    gh = h @ w_hh + b_hh
    rz = 1.0 / (1.0 + np.exp(-(i_t[:, :2 * H] + gh[:, :2 * H])))
    r, z = rz[:, :H], rz[:, H:]
    n = np.tanh(i_t[:, 2 * H:] + r * gh[:, 2 * H:])
    return n + z * (h - n)


class TapConv2d(nn.Conv2d):
    """nn.Conv2d with a (k, 1) kernel, stride 1, on NHWC (B, L, 1, C): the conv kernel, else shifted (folded) GEMMs.

    MLX's conv runs one GEMM with inner dimension k*C; OpenBLAS's float32 accumulation over k*C = 8192 is ~8x
    less accurate than torch's conv. The kernel (sums in passes of 8 taps x 32 channels) and shifted GEMMs of inner
    dimension B*C <= 2048 (`folded_tap_sum`) stay below torch's error on CREPE's layers and are faster.
    """

    def __call__(self, x: mx.array) -> mx.array:
        o, k, kw, c = self.weight.shape
        if kw != 1 or x.shape[2] != 1 or self.stride != (1, 1) or self.padding != (0, 0):
            raise ValueError(f"TapConv2d needs a (k, 1) kernel, width-1 input, stride 1, no padding; got kernel "
                             f"{(k, kw)}, input {x.shape}, stride {self.stride}, padding {self.padding}")
        b, length = x.shape[0], x.shape[1]
        n = length - k + 1
        path = dispatch.tap_conv2d(x, length, n)
        if path == "kernel":
            return cpu_kernels.tap_conv2d(self, x)  # (CREPE.layer fuses the padding, ReLU and BatchNorm)
        w = self.weight[:, :, 0, :]
        if path == "gemm per-tap":  # copy each tap's rows (2-D GEMMs)
            y = x[:, 0:n, 0].reshape(b * n, c) @ w[:, 0].T
            for j in range(1, k):
                y = mx.addmm(y, x[:, j:j + n, 0].reshape(b * n, c), w[:, j].T)
            y = y.reshape(b, n, o)
            if "bias" in self:
                y = y + self.bias
        else:  # the batch as one flat sequence: taps are contiguous row slices; the k - 1 straddling rows are cropped
            y = folded_tap_sum(x.reshape(b * length, c), [(0, w.transpose(1, 2, 0))], b * length, self.get("bias"))
            y = y.reshape(b, length, o)[:, :n]
        return y[:, :, None, :]


FOLD_MIN_COLUMNS = 256  # fold frames until the GEMMs' output width B * O reaches this (measured on CREPE's convs)


def fold_factor(out_channels: int) -> int:
    """Frames per folded row: the smallest power of two with B * O >= FOLD_MIN_COLUMNS."""
    b = 1
    while b * out_channels < FOLD_MIN_COLUMNS:
        b *= 2
    return b


def folded_tap_sum(rows: mx.array, groups: list[tuple[int, mx.array]], n: int, bias: mx.array | None = None,
                   fold: int | None = None) -> mx.array:
    """y[t] = bias + sum over (base, w) in groups, j < k of rows[t + base + j] @ w[j], for t < n; rows (M, C),
    each w (k, C, O) -> y (n, O).

    B = `fold` frames go into each GEMM row: a run of B frames starting anywhere is a free (B * C)-wide view of
    the flat buffer, and ceil((k - 1) / B) + 1 block-Toeplitz taps of (B * C, B * O) replace k taps of (C, O).
    A k-tap chain with O = 16 re-reads its whole input k times at a few FLOPs per byte; folded, each GEMM does
    B times more work per byte (CREPE-tiny's conv2 runs several times faster)."""
    c, o = rows.shape[1], groups[0][1].shape[2]
    fold = fold or fold_factor(o)
    blocks = -(-n // fold)
    plan = []
    for base, w in groups:
        taps = 1 + -(-(w.shape[0] - 1) // fold)
        wide = w if fold == 1 else _block_toeplitz(w, fold, taps)
        plan += [(base + s * fold, wide[s]) for s in range(taps)]
    need = max(start for start, _ in plan) + blocks * fold
    if rows.shape[0] < need:
        rows = pad_time(rows[None], 0, need - rows.shape[0])[0]
    flat = rows.reshape(-1)
    y = None
    for start, w in plan:
        view = flat[start * c:(start + blocks * fold) * c].reshape(blocks, fold * c)
        if y is None:
            y = _matmul_bias(view, w, None if bias is None else mx.tile(bias, fold))
        else:
            y = mx.addmm(y, view, w)
    return y.reshape(blocks * fold, o)[:n]


def _block_toeplitz(w: mx.array, fold: int, taps: int) -> mx.array:
    """(k, C, O) -> (taps, B*C, B*O): block (u, v) of folded tap s is w[s*B + u - v] (zero outside 0..k-1).
    Built as a one-hot matrix times w, so every entry is exactly one weight or zero."""
    k, c, o = w.shape
    s, u, v = np.meshgrid(np.arange(taps), np.arange(fold), np.arange(fold), indexing="ij")
    j = s * fold + u - v
    onehot = (j[..., None] == np.arange(k)).astype(np.float32).reshape(-1, k)
    wide = (mx.array(onehot, dtype=w.dtype) @ w.reshape(k, c * o)).reshape(taps, fold, fold, c, o)
    return wide.transpose(0, 1, 3, 2, 4).reshape(taps, fold * c, fold * o)


class Conv1d(nn.Conv1d):
    """nn.Conv1d on NLC (B, L, C): shifted GEMMs or the C++ kernels where dispatch.TABLE["conv1d"] says, else MLX's.

    MLX's CPU kernel for dilated convs is 15-60x slower than torch; the shifted-GEMM sum is as fast as torch and
    accurate to torch's level (each GEMM sums over C only)."""

    PRECISION_ENTRY_POINTS = ("glu_depthwise_silu",)  # take the layer's input: precision.apply casts them too

    PATHS = {"mlx": "_mlx", "kernel": "_kernel", "kernel depthwise": "_kernel_depthwise", "kernel grouped": "_grouped",
             "gemm multiply-adds": "_multiply_adds", "gemm strided host": "_strided_host", "gemm strided": "_strided",
             "kernel linear": "_linear", "gemm 1x1": "_shifted", "gemm shifted": "_shifted"}

    def __call__(self, x: mx.array, pad: bool = True) -> mx.array:
        """conv1d(x) + bias by the path dispatch.TABLE["conv1d"] chooses. `pad=False`: the caller's input already
        carries the zero margins (the output is 2 * padding shorter)."""
        impl = dispatch.conv1d(x, self.weight.shape, self.groups, self.stride, self.dilation,
                               self.weight.dtype == mx.float32)
        return getattr(self, self.PATHS[impl])(x, self.padding if pad else 0)

    def _mlx(self, x: mx.array, padding: int) -> mx.array:
        if padding != self.padding:
            raise ValueError(f"Conv1d(groups={self.groups}, stride={self.stride}) has no pad=False path")
        return super().__call__(x)

    def _kernel(self, x: mx.array, padding: int) -> mx.array:
        return cpu_kernels.conv1d(self, x, padding, self.dilation)

    def _linear(self, x: mx.array, padding: int) -> mx.array:
        return cpu_kernels.linear(self, pad_time(x, padding, padding) if padding else x)

    def _grouped(self, x: mx.array, padding: int) -> mx.array:
        return cpu_kernels.grouped_conv1d(self, x, padding)

    def _kernel_depthwise(self, x: mx.array, padding: int) -> mx.array:
        return cpu_kernels.depthwise_conv1d(self, x, padding)

    def _multiply_adds(self, x: mx.array, padding: int) -> mx.array:
        """Per-channel taps: one fused multiply-add per tap."""
        x = pad_time(x, padding, padding) if padding else x
        k, d = self.weight.shape[1], self.dilation
        n = x.shape[1] - d * (k - 1)
        w = self.weight[:, :, 0].T  # (k, C)
        y = x[:, 0:n] * w[0]
        for j in range(1, k):
            y = _fma(y, x[:, j * d:j * d + n], w[j])
        return y + self.bias if "bias" in self else y

    def _shifted(self, x: mx.array, padding: int) -> mx.array:
        """k shifted GEMMs (one for a 1x1 conv): the bias seeds the first GEMM (beta = 1) and addmm accumulates each
        tap into the donated buffer, with no separate pass over the output for either."""
        x = pad_time(x, padding, padding) if padding else x
        k, d = self.weight.shape[1], self.dilation
        n = x.shape[1] - d * (k - 1)
        y = _matmul_bias(x[:, 0:n], self.weight[:, 0, :].T, self.get("bias"))
        for j in range(1, k):
            y = mx.addmm(y, x[:, j * d:j * d + n], self.weight[:, j, :].T)
        return y

    @profiled
    def glu_depthwise_silu(self, x: mx.array) -> mx.array:
        """silu(self(glu(x))) for a depthwise conv (stride 1, dilation 1) of x's GLU (a * sigmoid(b) of its channel
        halves): one kernel pass on the CPU (the GLU as it reads, the SiLU as it writes), else the three ops."""
        o = self.weight.shape[0]
        if (self.groups == o and self.weight.shape[2] == 1 and self.stride == 1 and self.dilation == 1
                and dispatch.fused(x, "depthwise1d+glu+silu", o)):
            return cpu_kernels.depthwise_conv1d(self, x, self.padding, glu=True, silu=True)
        a, b = mx.split(x, 2, axis=-1)
        return fastmath.silu(self(a * fastmath.sigmoid(b)))

    @profiled
    def leaky_host(self, x: np.ndarray, slope: float, valid: tuple[int, int],
                   residual: np.ndarray | None = None) -> np.ndarray:
        """Unpadded conv of host x read as leaky_relu(x, slope), frames outside `valid` as zeros, + residual, in
        one kernel pass (`cpu_kernels.leaky_conv1d`); host (B, L', O) out."""
        return cpu_kernels.leaky_conv1d(self, x, slope, valid, residual)

    def _strided_host(self, x: mx.array, padding: int) -> mx.array:
        return host_gemm.strided_conv1d(self, x, padding)

    def _strided(self, x: mx.array, padding: int) -> mx.array:
        """Stride s as a stride-1 conv over frames folded s at a time: (B, L, C) -> (B, L/s, s*C) is a free reshape,
        and output t reads folded frames t .. t + ceil(k/s) - 1 (of the last one, only its first k mod s frames)."""
        x = pad_time(x, padding, padding) if padding else x
        o, k, c = self.weight.shape
        s = self.stride
        n = (x.shape[1] - k) // s + 1
        q = -(-k // s)  # folded taps
        length = (n + q - 1) * s
        if x.shape[1] >= length:
            x = x[:, :length]
        else:  # frames past the input that no kernel tap reads
            x = mx.pad(x, [(0, 0), (0, length - x.shape[1]), (0, 0)])
        folded = x.reshape(x.shape[0], n + q - 1, s * c)
        y = None
        for j in range(q):
            taps = min(s, k - j * s)  # the last folded tap may cover fewer than s frames: use only those
            w = self.weight[:, j * s:j * s + taps].reshape(o, taps * c).T
            rows = folded[:, j:j + n, :taps * c]
            y = rows @ w if y is None else mx.addmm(y, rows, w)
        return y + self.bias if "bias" in self else y


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (dilation 1) on NLC (B, L, C), as one GEMM + phase-wise overlap-add.

    MLX's CPU transposed conv is ~50x slower than torch; here every input frame is multiplied by the whole
    (C_in, K * C_out) kernel once and tap k lands on output phase k % stride, shifted by k // stride frames."""

    PRECISION_ENTRY_POINTS = ("leaky_add",)  # take the layer's input: precision.apply casts them too

    def __call__(self, x: mx.array) -> mx.array:
        """conv_transpose1d(x) + bias by the path dispatch.TABLE["conv_transpose"] chooses."""
        impl = dispatch.conv_transpose(x, self.dilation, one_d=True)
        return super().__call__(x) if impl == "mlx" else self._kernel(x) if impl == "kernel" else self._overlap_add(x)

    def _kernel(self, x: mx.array) -> mx.array:
        return cpu_kernels.conv_transpose2d(self, x, (1, self.stride), (0, self.padding), (0, self.output_padding))

    def _overlap_add(self, x: mx.array) -> mx.array:
        o, k, c = self.weight.shape
        s, p = self.stride, self.padding
        b, t, _ = x.shape
        z = (x @ self.weight.transpose(2, 1, 0).reshape(c, k * o)).reshape(b, t, k, o)
        q_max = -(-k // s)  # taps per phase (ceil)
        phases = []
        for r in range(s):
            shifted = [pad_time(z[:, :, q * s + r], q, q_max - 1 - q) for q in range(q_max) if q * s + r < k]
            phases.append(sum(shifted[1:], shifted[0]) if shifted else mx.zeros((b, t + q_max - 1, o), z.dtype))
        full = mx.stack(phases, axis=2).reshape(b, (t + q_max - 1) * s, o)
        length = (t - 1) * s + k - 2 * p + self.output_padding
        if p + length > full.shape[1]:  # output_padding past the last tap: zeros, as torch
            full = mx.pad(full, [(0, 0), (0, p + length - full.shape[1]), (0, 0)])
        y = full[:, p:p + length]
        return y + self.bias if "bias" in self else y

    @profiled
    def leaky_add(self, x: mx.array, slope: float, residual: mx.array) -> mx.array:
        """self(leaky_relu(x, slope)) + residual: on the CPU kernel in one pass (leaky ReLU as it reads, the add
        as it writes), else the three ops."""
        if (self.dilation == 1 and residual.dtype == mx.float32
                and dispatch.fused(x, "conv_transpose1d+leaky+add", self.weight.shape[0])):
            return cpu_kernels.conv_transpose2d(self, x, (1, self.stride), (0, self.padding),
                                                (0, self.output_padding), slope=slope, residual=residual)
        return self(leaky_relu(x, slope)) + residual


@lru_cache(maxsize=None)
def _leaky_relu_fn(slope: float):
    # max(x, slope*x) == leaky_relu for 0 < slope < 1, bit for bit (the CPU kernel's prologue computes the same);
    # MLX's CPU `where` is ~10x slower than maximum, and compiled the two ops are one pass over memory
    return mx.compile(lambda x: mx.maximum(x, x * slope), shapeless=True)


def leaky_relu(x: mx.array, slope: float) -> mx.array:
    """nn.leaky_relu(x, slope) for 0 < slope < 1, as max(x, slope * x); any layout."""
    return _leaky_relu_fn(float(slope))(x)


def pad_time(x: mx.array, left: int, right: int) -> mx.array:
    """Zero frames around axis 1 of (B, L, C): one copy (mx.pad fills zeros, then copies x over them: 1.7x slower)."""
    parts = [mx.zeros((x.shape[0], left, x.shape[2]), x.dtype)] if left else []
    parts.append(x)
    if right:
        parts.append(mx.zeros((x.shape[0], right, x.shape[2]), x.dtype))
    return mx.concatenate(parts, axis=1) if len(parts) > 1 else x


def _matmul_bias(a: mx.array, w: mx.array, bias: mx.array | None) -> mx.array:
    return a @ w if bias is None else mx.addmm(bias, a, w)


@mx.compile
def _fma(y: mx.array, a: mx.array, b: mx.array) -> mx.array:
    return y + a * b  # one kernel per tap instead of a multiply and an add


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d_fold(c: int, o: int) -> int:
    """Pixels per GEMM row for a 3-wide kernel row: 2 (two (2C, 2O) taps instead of three (C, O)) pays for 32
    output channels or fewer (RMVPE's 16 -> 16 convs on 1024x128); 4 and up waste too many FLOPs."""
    return 2 if o <= 32 else 1


class Conv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, groups 1, dilation 1) on NHWC (B, H, W, C): on the CPU, the direct conv kernel
    (`cpu_kernels`; 1 x 1 only for thin outputs); otherwise kh*kw shifted GEMMs on flat rows, or MLX's conv
    (`dispatch.conv2d` chooses).

    MLX's CPU conv2d is 4-8x slower than torch for RMVPE's 16- and 32-channel 3x3 convs. With the padded image
    flattened to rows of width W + 2p, tap (i, j) is the contiguous row slice at offset i*(W+2p) + j, so every
    tap is one GEMM (inner dimension C) accumulated by addmm; the 2p wrap-around columns are cropped at the end.
    The kernel is 2-4x faster again: it keeps its accumulators in registers over the whole reduction."""

    PRECISION_ENTRY_POINTS = ("conv_bn_relu",)  # take the layer's input: precision.apply casts them too

    def _simple(self) -> bool:
        return _pair(self.stride) == (1, 1) and self.groups == 1 and _pair(self.dilation) == (1, 1)

    PATHS = {"kernel": "_kernel", "mlx": "_mlx", "gemm 1x1": "_pointwise", "gemm shifted": "_shifted"}

    def __call__(self, x: mx.array) -> mx.array:
        """conv2d(x) + bias by the path dispatch.TABLE["conv2d"] chooses."""
        impl = dispatch.conv2d(x, self.weight.shape, _pair(self.padding), self._simple())
        return getattr(self, self.PATHS[impl])(x)

    def _kernel(self, x: mx.array) -> mx.array:
        return cpu_kernels.conv2d(self, x, _pair(self.padding))

    def _mlx(self, x: mx.array) -> mx.array:
        return super().__call__(x)

    def _pointwise(self, x: mx.array) -> mx.array:
        ph, pw = _pair(self.padding)
        y = (x if (ph, pw) == (0, 0) else mx.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)])) @ self.weight[:, 0, 0].T
        return y + self.bias if "bias" in self else y

    def _shifted(self, x: mx.array) -> mx.array:
        o, kh, kw, c = self.weight.shape
        ph, pw = _pair(self.padding)
        b, h, w, _ = x.shape
        hp, wp = h + 2 * ph, w + 2 * pw
        ho, wo = hp - kh + 1, wp - kw + 1
        # rows padded on the right only: row r's right zeros are row r + 1's left padding in the flat layout
        if pw:
            x = mx.concatenate([x, mx.zeros((b, h, 2 * pw, c), x.dtype)], axis=2)
        lead = ph * wp + pw
        per_image = hp * wp + kw - 1
        flat = pad_time(x.reshape(b, h * wp, c), lead, per_image - lead - h * wp).reshape(b * per_image, c)
        # kernel row i is a kw-tap 1-D conv over the flat rows from offset i * wp; images follow one another
        # (an output row never reads past its own image, so the batch is one flat sequence)
        groups = [(i * wp, self.weight[:, i].transpose(1, 2, 0)) for i in range(kh)]
        y = folded_tap_sum(flat, groups, b * per_image, self.get("bias"), fold=conv2d_fold(c, o))
        return y.reshape(b, per_image, o)[:, :ho * wp].reshape(b, ho, wp, o)[:, :, :wo]

    @profiled
    def conv_bn_relu(self, x: mx.array, bn: "BatchNorm", residual: mx.array | None = None,
                     host: bool = False) -> mx.array | np.ndarray:
        """relu(bn(self(x))) (+ residual): on the CPU kernel in one pass (its epilogue rounds each op as MLX does),
        else the conv and then one compiled pass for BN, ReLU and the add (the same ops, the same values).
        `host`: the kernel's result may stay a host array, for the next kernel conv (x and residual may be ones)."""
        ph, pw = _pair(self.padding)
        if bn.frozen() and dispatch.conv2d_epilogue(x, self.weight.shape, (ph, pw), self._simple(),
                                                    "+bn+relu" + ("" if residual is None else "+add")):
            return cpu_kernels.conv2d(self, x, (ph, pw), bn, relu=True, residual=residual, host_out=host)
        x, residual = (v if v is None or isinstance(v, mx.array) else mx.array(v) for v in (x, residual))
        if not bn.frozen():
            y = nn.relu(bn(self(x)))
            return y if residual is None else y + residual
        alpha, beta = bn.affine()
        y = self(x)
        return _affine_relu(y, alpha, beta) if residual is None else _affine_relu_add(y, alpha, beta, residual)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (dilation 1) on NHWC (B, H, W, C): on the CPU, one direct conv per output phase
    (`cpu_kernels`); otherwise one GEMM + phase-wise overlap-add.

    MLX's CPU transposed conv2d is ~100x slower than torch on RMVPE's decoder; as in ConvTranspose1d, tap (i, j)
    lands on output phase (i % sh, j % sw), shifted by (i // sh, j // sw) input pixels."""

    PRECISION_ENTRY_POINTS = ("conv_bn_relu",)  # take the layer's input: precision.apply casts them too

    def __call__(self, x: mx.array) -> mx.array:
        """conv_transpose2d(x) + bias by the path dispatch.TABLE["conv_transpose"] chooses."""
        impl = dispatch.conv_transpose(x, _pair(self.dilation), one_d=False)
        return super().__call__(x) if impl == "mlx" else self._kernel(x) if impl == "kernel" else self._overlap_add(x)

    def _kernel(self, x: mx.array) -> mx.array:
        return cpu_kernels.conv_transpose2d(self, x, _pair(self.stride), _pair(self.padding),
                                            _pair(self.output_padding))

    def _overlap_add(self, x: mx.array) -> mx.array:
        o, kh, kw, c = self.weight.shape
        (sh, sw), (ph, pw), (oh, ow) = _pair(self.stride), _pair(self.padding), _pair(self.output_padding)
        b, h, w, _ = x.shape
        z = (x @ self.weight.transpose(3, 1, 2, 0).reshape(c, kh * kw * o)).reshape(b, h, w, kh, kw, o)
        qh, qw = -(-kh // sh), -(-kw // sw)  # taps per phase (ceil)
        rows = []
        for ri in range(sh):
            cols = []
            for rj in range(sw):
                acc = mx.zeros((b, h + qh - 1, w + qw - 1, o), dtype=z.dtype)
                for qi in range(qh):
                    for qj in range(qw):
                        i, j = qi * sh + ri, qj * sw + rj
                        if i < kh and j < kw:
                            acc = acc + mx.pad(z[:, :, :, i, j], [(0, 0), (qi, qh - 1 - qi), (qj, qw - 1 - qj), (0, 0)])
                cols.append(acc)
            rows.append(mx.stack(cols, axis=3))  # (b, H', W', sw, o)
        full = mx.stack(rows, axis=2).reshape(b, (h + qh - 1) * sh, (w + qw - 1) * sw, o)
        lh, lw = (h - 1) * sh + kh - 2 * ph + oh, (w - 1) * sw + kw - 2 * pw + ow
        extra_h, extra_w = max(ph + lh - full.shape[1], 0), max(pw + lw - full.shape[2], 0)
        if extra_h or extra_w:  # output_padding past the last tap: zeros, as torch
            full = mx.pad(full, [(0, 0), (0, extra_h), (0, extra_w), (0, 0)])
        y = full[:, ph:ph + lh, pw:pw + lw]
        return y + self.bias if "bias" in self else y

    @profiled
    def conv_bn_relu(self, x: mx.array, bn: "BatchNorm") -> mx.array:
        """relu(bn(self(x))): on the CPU kernel, BN and ReLU are each phase conv's epilogue (rounded as MLX's ops
        round them); otherwise the three layers in turn."""
        if (_pair(self.dilation) == (1, 1) and bn.frozen()
                and dispatch.fused(x, "conv_transpose2d+bn+relu", self.weight.shape[0])):
            return cpu_kernels.conv_transpose2d(self, x, _pair(self.stride), _pair(self.padding),
                                                _pair(self.output_padding), bn=bn, relu=True)
        return nn.relu(bn(self(x)))


class BatchNorm(nn.BatchNorm):
    """nn.BatchNorm in eval as torch's CPU kernel computes it: x * alpha + beta, channels last (..., C).

    alpha = weight / sqrt(running_var + eps) and beta = bias - running_mean * alpha are per-channel vectors, so
    the big tensor sees one fused multiply-add instead of MLX's four passes."""

    def __call__(self, x: mx.array) -> mx.array:
        if not self.frozen():
            return super().__call__(x)
        return _scale_shift(x, *self.affine())

    def frozen(self) -> bool:
        """Eval mode with running statistics: the transform is the per-channel affine x * alpha + beta."""
        return not self.training and "running_mean" in self

    def affine(self) -> tuple[mx.array, mx.array]:
        """(alpha, beta) of the eval transform x * alpha + beta; computed in float32 from half statistics (eps and
        1 / sqrt in float16 lose up to 1e-2 on small variances), then rounded to the layer's dtype."""
        dtype = self.running_var.dtype
        f32 = (lambda a: a) if dtype == mx.float32 else (lambda a: a.astype(mx.float32))
        alpha = 1.0 / mx.sqrt(f32(self.running_var) + self.eps)
        if "weight" in self:
            alpha = alpha * f32(self.weight)
        beta = (f32(self.bias) if "bias" in self else 0.0) - f32(self.running_mean) * alpha
        return (alpha, beta) if dtype == mx.float32 else (alpha.astype(dtype), beta.astype(dtype))


@partial(mx.compile, shapeless=True)
def _scale_shift(x: mx.array, alpha: mx.array, beta: mx.array) -> mx.array:
    return x * alpha + beta


@partial(mx.compile, shapeless=True)
def _affine_relu(x: mx.array, alpha: mx.array, beta: mx.array) -> mx.array:
    return nn.relu(x * alpha + beta)


@partial(mx.compile, shapeless=True)
def _affine_relu_add(x: mx.array, alpha: mx.array, beta: mx.array, residual: mx.array) -> mx.array:
    return nn.relu(x * alpha + beta) + residual
