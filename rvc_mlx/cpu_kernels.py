"""MLX front end of the C++ kernels (csrc/, one build per ISA: `rvc_mlx.dispatch` picks it) for MLX's CPU device:
direct NHWC conv2d, transposed conv2d and conv1d (one conv per output phase), dilated conv1d (a 1 x k conv2d over
one row), grouped conv1d, depthwise conv1d, the GRU recurrence, multi-head attention, softmax, GELU, LayerNorm and
per-channel GroupNorm + GELU; with fused neighbours (BatchNorm, ReLU, leaky ReLU, residual adds, GLU, SiLU)
rounded as MLX's ops.

MLX has no fast CPU conv for 16-256 channels (its im2col + GEMM, and the shifted-GEMM sums in layers.py, run
2-3x slower than torch's oneDNN on RMVPE), and runs depthwise convs and per-step recurrences as chains of
scalar elementwise ops. The kernels read the evaluated input in place (numpy view of the MLX buffer) and write a
numpy buffer, which MLX copies once (or the next kernel reads). Whether a kernel runs is `dispatch`'s choice.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import numpy as np

from rvc_mlx import dispatch
from rvc_mlx.runtime import mx


def warn_if_missing() -> None:
    """One-line RuntimeWarning on Linux when kernels are wanted but none runs here (the convs then take the
    slower GEMM paths). Settings this machine cannot meet raise at their first use instead (dispatch.check)."""
    try:
        s = dispatch.settings()
        missing = s.kernels and s.isa is None and dispatch.variant() is None
    except dispatch.KernelError:
        return
    if sys.platform.startswith("linux") and missing:
        warnings.warn(f"rvc-mlx: {dispatch.status()}; reinstall with `pip install -e .` and a C++ compiler (g++)",
                      RuntimeWarning, stacklevel=2)


def _k():
    return dispatch.kernels()


def conv2d(module, x: mx.array | np.ndarray, padding: tuple[int, int], bn=None, relu: bool = False,
           residual: mx.array | np.ndarray | None = None, host_out: bool = False) -> mx.array | np.ndarray:
    """`module`'s conv (weight (O, kh, kw, C), optional bias) of NHWC x, with zero padding (ph, pw); then, in the
    kernel's epilogue, y * alpha + beta (`bn`: an eval BatchNorm), ReLU, + residual, each as MLX rounds it.
    x and residual may be host arrays; `host_out` returns one (O a multiple of the vector width): a chain of
    kernel convs then copies into MLX once, at its end."""
    o = module.weight.shape[0]
    if (bn is not None or residual is not None or host_out) and o % dispatch.lanes():
        raise ValueError(f"conv2d epilogue needs output channels in multiples of {dispatch.lanes()}, got {o}")
    scale, shift = (None, None) if bn is None else _affine(bn)
    y = _conv(module, "conv", lambda w: w, host(x), padding, 1, scale=scale, shift=shift, relu=relu,
              residual=None if residual is None else host(residual))
    return y if host_out else _to_mlx(y, o)


def conv1d(module, x: mx.array, padding: int, dilation: int) -> mx.array:
    """`module`'s conv (weight (O, k, C), optional bias) of NLC x, zero padding `padding`, dilation `dilation`:
    a 1 x k conv2d over one row of L pixels (the kernel tiles long rows across cores)."""
    b, length, c = x.shape
    y = _conv(module, "conv1d", lambda w: w[:, None], host(x).reshape(b, 1, length, c), (0, padding), dilation)
    return _to_mlx(y[:, 0], module.weight.shape[0])


def tap_conv2d(module, x: mx.array, padding: tuple[int, int] = (0, 0), bn=None,
               relu_first: bool = False) -> mx.array:
    """`module`'s conv (weight (O, k, 1, C), optional bias, stride (s, 1)) of NHWC x (B, L, 1, C) zero-padded by
    `padding` (frames before, after), (B, L', 1, O) out; then, in the kernel's epilogue, ReLU (`relu_first`) and
    `bn` (eval: y * alpha + beta), CREPE's order. One 1 x k conv of an image whose rows are the B items (a 1-row
    kernel never mixes rows; windows of rows hold several short items: CREPE's last convs have 4-16 outputs).
    Stride s (CREPE's conv1: one input channel) folds s frames into channels: k / s taps of s * C channels."""
    (o, k, _, c), s = module.weight.shape, module.stride[0]
    b, length = x.shape[:2]
    n = (length + sum(padding) - k) // s + 1
    xn = host(x).reshape(b, length, c)
    before = padding[0]
    if s != 1:
        if k % s or c != 1:
            raise ValueError(f"tap_conv2d folds a stride only for one input channel and k a multiple of s; got "
                             f"C {c}, k {k}, s {s}")
        rows = -(-(length + sum(padding)) // s)
        xn = np.pad(xn, [(0, 0), (before, rows * s - length - before), (0, 0)]).reshape(b, rows, s * c)
        before = 0
    weight = _packed(module, "tap", lambda w: w.reshape(o, 1, k // s, s * c))
    scale, shift = (None, None) if bn is None else _affine(bn)
    wide = weight.shape[-1]
    buf, y = _output((b, n, wide))  # CREPE-full's conv1 output is 1 MB a frame: MLX's buffer, not a copy
    _conv2d_nhwc(xn[None], weight, _bias(module), buf[None], (0, before), (b, n), scale=scale, shift=shift,
                 relu=_k().RELU_BEFORE_BN if relu_first else 0)
    return (y() if wide == o else y()[..., :o])[:, :, None, :]


def grouped_conv1d(module, x: mx.array, padding: int) -> mx.array:
    """`module`'s grouped conv (weight (O, k, C / G), optional bias, stride 1, dilation 1; O / G a multiple of the
    vector width) of NLC x with zero padding: each group a batch of the kernel's conv, run by the cores together."""
    g, (o, k, cg) = module.groups, module.weight.shape
    b, length, _ = x.shape
    og = o // g
    xg = np.ascontiguousarray(host(x).reshape(b, length, g, cg).transpose(0, 2, 1, 3)).reshape(b * g, 1, length, cg)
    weight = _packed_groups(module)
    y = np.empty((b * g, 1, length + 2 * padding - k + 1, og), dtype=np.float32)
    bias = np.asarray(module.bias, dtype=np.float32) if "bias" in module else None
    _conv2d_nhwc(xg, weight, bias, y, (0, padding), y.shape[1:3], groups=g)
    return mx.array(y.reshape(b, g, -1, og).transpose(0, 2, 1, 3).reshape(b, -1, o))


def leaky_conv1d(module, x: np.ndarray, slope: float, valid: tuple[int, int],
                 residual: np.ndarray | None = None) -> np.ndarray:
    """`module`'s unpadded conv (weight (O, k, C), O a multiple of the vector width) of host NLC x read as
    leaky_relu(x, slope), its frames outside [valid[0], valid[1]) as zeros; + residual (shaped as the output).
    Host in, host out: a resblock's chain of convs never copies into MLX (each value rounds as MLX's ops)."""
    b, length, c = x.shape
    if residual is not None:
        residual = np.ascontiguousarray(residual)[:, None]
    x = np.ascontiguousarray(x).reshape(b, 1, length, c)
    y = _conv(module, "conv1d", lambda w: w[:, None], x, (0, 0), module.dilation, residual=residual,
              slope=float(slope), valid=valid)
    return y[:, 0]


def _conv(module, key, select, x: np.ndarray, padding: tuple[int, int], dilation: int, scale=None, shift=None,
          relu: bool = False, residual: np.ndarray | None = None, slope: float | None = None,
          valid: tuple[int, int] | None = None) -> np.ndarray:
    """The kernel's conv of host NHWC x by select(module.weight) (kh', kw' taps), plus the module's bias, with
    the kernel's prologue (`slope`, `valid` input columns) and epilogue: host (B, H', W', O') with O' = O rounded
    up to the vector width."""
    weight = _packed(module, key, select)
    kh, kw, _, wide = weight.shape
    b, h, w, _ = x.shape
    ho, wo = h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - dilation * (kw - 1)
    y = np.empty((b, ho, wo, wide), dtype=np.float32)
    _conv2d_nhwc(x, weight, _bias(module), y, padding, (ho, wo), scale=scale, shift=shift, relu=relu,
                 residual=residual, dilation=dilation, slope=slope, valid=valid)
    return y


def conv_transpose2d(module, x: mx.array, stride, padding, output_padding, bn=None, relu: bool = False,
                     slope: float | None = None, residual: mx.array | None = None) -> mx.array:
    """`module`'s transposed conv (weight (O, kh, kw, C): tap (i, j) of input pixel a lands on a * s - p + (i, j);
    or (O, k, C) over NLC x: one row) as one direct conv per output phase (y[r::s] reads only the taps
    i = r + p mod s), written in place. Fused, as MLX's ops round them: x read as leaky_relu(x, slope); in each
    phase's epilogue y * alpha + beta (`bn`, eval), ReLU, + residual (shaped as y; both need O in whole vectors)."""
    one_d = module.weight.ndim == 3
    o, kh, kw = (module.weight.shape[0], 1, module.weight.shape[1]) if one_d else module.weight.shape[:3]
    if (bn is not None or residual is not None) and o % dispatch.lanes():
        raise ValueError(f"conv_transpose2d epilogue needs output channels in multiples of {dispatch.lanes()}, "
                         f"got {o}")
    scale, shift = (None, None) if bn is None else _affine(bn)
    xn = host(x)[:, None] if one_d else host(x)
    b, h, w, _ = xn.shape
    lh = (h - 1) * stride[0] - 2 * padding[0] + kh + output_padding[0]
    lw = (w - 1) * stride[1] - 2 * padding[1] + kw + output_padding[1]
    res = None if residual is None else (host(residual)[:, None] if one_d else host(residual))
    bias = _bias(module)
    y = np.empty((b, lh, lw, o + -o % dispatch.lanes()), dtype=np.float32)
    for ri in range(stride[0]):
        taps_h, pt, rows = _phase(kh, stride[0], padding[0], ri, lh)
        for rj in range(stride[1]):
            taps_w, pl, cols = _phase(kw, stride[1], padding[1], rj, lw)
            if not rows or not cols:
                continue
            if not taps_h or not taps_w:  # no tap reaches this phase: the bias alone, as torch
                v = _epilogue(np.zeros(y.shape[-1], np.float32) if bias is None else bias, scale, shift, relu)
                y[:, ri::stride[0], rj::stride[1]] = v if res is None else v + res[:, ri::stride[0], rj::stride[1]]
                continue
            weight = _packed(module, (ri, rj), lambda w, th=taps_h, tw=taps_w: (w[:, None] if one_d else w)[:, th][
                :, :, tw])
            _conv2d_nhwc(xn, weight, bias, y, (pt, pl), (rows, cols), (ri, rj), stride, scale=scale, shift=shift,
                         relu=relu, residual=res, slope=slope)
    out = _to_mlx(y, o)
    return out[:, 0] if one_d else out


def depthwise_conv1d(module, x: mx.array, padding: int, glu: bool = False, silu: bool = False) -> mx.array:
    """`module`'s depthwise conv (weight (C, k, 1), optional bias, stride 1, dilation 1) of NLC x with zero padding:
    read as GLU(x) (a * sigmoid(b) of x's channel halves) if `glu`, written as SiLU(y) if `silu`."""
    c, k, _ = module.weight.shape
    b, length, _ = x.shape
    weight = _packed(module, "depthwise", lambda w: w[:, None], blocks=False)[0, :, 0]  # (C, k, 1) as (k, C)
    buf, y = _output((b, length + 2 * padding - k + 1, c))
    bias = np.asarray(module.bias, dtype=np.float32) if "bias" in module else None
    _k().depthwise_conv1d(host(x), weight, bias, buf, padding, glu, silu)
    return y()


def gru_scan(gis: list[mx.array], w_hh: list[mx.array], b_hh: list[mx.array]) -> tuple[list, list]:
    """torch's GRU recurrence per direction (the first forward, a second reversed), the directions in parallel:
    input projections gi (B, T, 3H), w_hh (3H, H), b_hh (3H) -> outputs (B, T, H) and last states (B, H)."""
    b, t, h3 = gis[0].shape
    outs = [np.empty((b, t, h3 // 3), dtype=np.float32) for _ in gis]
    last = [np.empty((b, h3 // 3), dtype=np.float32) for _ in gis]
    _k().gru_scan([(host(gi), _transposed(w), host(bias), out, h, i == 1)
                   for i, (gi, w, bias, out, h) in enumerate(zip(gis, w_hh, b_hh, outs, last, strict=True))])
    return [mx.array(o) for o in outs], [mx.array(h) for h in last]


def softmax(x: mx.array, scale: float, in_place: bool = False) -> mx.array:
    """softmax(x * scale) over x's last axis, one vectorised pass per row (x * scale rounded as MLX's multiply).
    `in_place`: x is an array only the caller holds (e.g. a matmul's fresh output): written over, no copy."""
    xn = np.asarray(x)  # evaluates x: a view of MLX's buffer
    if in_place and xn.flags.c_contiguous and xn.flags.writeable:
        _k().softmax(xn.reshape(-1, xn.shape[-1]), xn.reshape(-1, xn.shape[-1]), float(scale))
        return x
    xn = np.ascontiguousarray(xn)
    buf, y = _output(xn.shape)
    _k().softmax(xn.reshape(-1, xn.shape[-1]), buf.reshape(-1, xn.shape[-1]), float(scale))
    return y()


def attention(q: mx.array, k: mx.array, v: mx.array, heads: int, scale: float, rows: int) -> mx.array:
    """softmax(q k^T * scale) v per head of q, k, v (B, T, heads * D), the heads' dims side by side, as out (B, T,
    heads * D): a work item computes one head's block of `rows` query rows (scores, softmax, output) in cache."""
    mx.eval(q, k, v)
    qn, kn, vn = host(q), host(k), host(v)
    buf, out = _output(qn.shape)
    _k().attention(qn, kn, vn, buf, heads, float(scale), rows)
    return out()


def linear(module, x: mx.array) -> mx.array:
    """`module`'s Linear (weight (N, K), or a pointwise conv's (N, 1, K); optional bias) of x (..., K) as (..., N):
    the kernel's GEMM on the weight packed once as panels of 2 * LANES output columns (N a multiple of them), kept
    until the weight is replaced."""
    n, k = module.weight.shape[0], module.weight.shape[-1]
    cache = _weight_cache(module)
    wide = 2 * dispatch.lanes()
    if (wide, "panels") not in cache:
        w = np.asarray(module.weight, dtype=np.float32).reshape(n, k)
        cache[wide, "panels"] = np.ascontiguousarray(w.reshape(n // wide, wide, k).transpose(0, 2, 1))
    xn = host(x).reshape(-1, k)
    buf, y = _output((xn.shape[0], n))
    _k().linear(xn, cache[wide, "panels"], host(module.bias) if "bias" in module else None, buf)
    return y().reshape(*x.shape[:-1], n)


def gelu(x: mx.array) -> mx.array:
    """torch's exact GELU of x (any layout)."""
    xn = host(x)
    buf, y = _output(xn.shape)
    _k().gelu(xn.reshape(-1), buf.reshape(-1))
    return y()


def layer_norm(norm, x: mx.array, residual: mx.array | None = None) -> mx.array:
    """`norm` (a LayerNorm over the last axis, affine) of x + residual (the add rounded as MLX's), one kernel pass
    per row: the add, the statistics and the affine normalisation; C in whole vectors."""
    mx.eval(x if residual is None else (x, residual))  # one evaluation for both
    xn = host(x)
    rn = None if residual is None else host(residual)
    buf, y = _output(xn.shape)
    c = xn.shape[-1]
    _k().layer_norm(xn.reshape(-1, c), None if rn is None else rn.reshape(-1, c), host(norm.weight),
                    host(norm.bias), buf.reshape(-1, c), float(norm.eps))
    return y()


def group_norm_gelu(norm, x: mx.array) -> mx.array:
    """`norm` (a GroupNorm with one group per channel: statistics per channel over all frames) of NLC x, then
    GELU, in one kernel; C in whole vectors."""
    xn = host(x)
    buf, y = _output(xn.shape)
    _k().group_norm_gelu(xn, host(norm.weight), host(norm.bias), buf, float(norm.eps), True)
    return y()


def conv_group_norm_gelu(conv, norm, x: mx.array) -> mx.array:
    """`conv` (one input channel, no bias, no padding; weight (O, k, 1)) of NLC x (B, N, 1), then `norm` (a
    GroupNorm with one group per channel) and GELU, in one kernel: the conv's output is never stored, each of the
    kernel's three passes recomputes it from x (k multiply-adds per value, the waveform in cache)."""
    b, n, _ = x.shape
    k, stride = conv.weight.shape[1], conv.stride
    weight = _packed(conv, "mono", lambda w: w[:, None], blocks=False)[0, :, 0]  # (O, k, 1) as (k, O)
    buf, y = _output((b, (n - k) // stride + 1, conv.weight.shape[0]))
    _k().conv_group_norm_gelu(host(x).reshape(b, n), weight, host(norm.weight), host(norm.bias), buf, stride,
                              float(norm.eps))
    return y()


# glibc's largest mmap threshold: a bigger numpy buffer is fresh pages on every call, which the OS zeroes
FRESH_PAGES_BYTES = 32 << 20


def _output(shape: tuple[int, ...]) -> tuple[np.ndarray, Callable[[], mx.array]]:
    """A float32 buffer for a kernel's output and the call that gives it to MLX afterwards. Small: a numpy buffer
    (reused memory), copied into MLX. Large: the buffer of a new MLX array, written in place (fresh pages faulted
    and zeroed on every call took HuBERT's first GroupNorm + GELU longer than its arithmetic; MLX's cache reuses)."""
    if int(np.prod(shape)) * 4 < FRESH_PAGES_BYTES:
        buf = np.empty(shape, dtype=np.float32)
        return buf, lambda: mx.array(buf)
    y = mx.zeros(shape, dtype=mx.float32)
    mx.eval(y)
    buf = np.asarray(y)
    if not (buf.flags.writeable and buf.flags.c_contiguous):  # (MLX gives each evaluated zeros its own buffer)
        raise AssertionError("MLX gave a kernel output buffer that is not writable and contiguous")
    return buf, lambda: y


def _transposed(w: mx.array) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).T)


def _epilogue(v: np.ndarray, scale, shift, relu: bool) -> np.ndarray:
    """The kernel's epilogue on host values: v * scale + shift (two roundings), then ReLU."""
    if scale is not None:
        v = v * scale + shift
    return np.maximum(v, np.float32(0)) if relu else v


def _to_mlx(y: np.ndarray, out_channels: int) -> mx.array:
    """MLX's copy of y without the zero channels that rounded O up to the vector width."""
    return mx.array(y if y.shape[-1] == out_channels else y[..., :out_channels])


def _phase(k: int, s: int, p: int, r: int, length: int) -> tuple[list[int], int, int]:
    """Output positions s * m + r of a transposed conv along one axis: y[s*m + r] = sum over q of x[m + d - q] @
    w[i0 + q*s] with i0 = (r + p) mod s, d = (r + p) // s. As a conv over x: taps in increasing input order, the
    left padding, and the number of positions."""
    i0, d = (r + p) % s, (r + p) // s
    taps = list(range(i0, k, s))[::-1]
    count = max(0, -(-(length - r) // s))
    return taps, len(taps) - 1 - d, count


def host(x: mx.array | np.ndarray) -> np.ndarray:
    """x evaluated, as a C-contiguous numpy array: a view of MLX's buffer when x is contiguous."""
    return np.ascontiguousarray(np.asarray(x))  # evaluates x; a view of MLX's buffer when x is contiguous


def _conv2d_nhwc(x: np.ndarray, weight: np.ndarray, bias, y: np.ndarray, padding: tuple[int, int],
                 outputs: tuple[int, int], origin: tuple[int, int] = (0, 0), step: tuple[int, int] = (1, 1), *,
                 scale=None, shift=None, relu: bool = False, residual=None, dilation: int = 1, slope=None,
                 valid: tuple[int, int] | None = None, groups: int = 1) -> None:
    """The kernel's conv2d_nhwc with weights packed by `_packed` / `_packed_groups` (in blocks of output channels)."""
    valid = (-(1 << 31), (1 << 31) - 1) if valid is None else valid  # (the kernel clamps to x's columns)
    _k().conv2d_nhwc(x, weight, bias, y, padding, outputs, origin, step, scale, shift, relu, residual, dilation,
                     slope, valid, groups, True)


def _in_blocks(w: np.ndarray, groups: int = 1) -> np.ndarray:
    """(G * kh, kw, C, O) weights, each group's in blocks of the kernel's WEIGHT_BLOCK output channels (the last
    narrower), block after block, each (kh, kw, C, width): the layout the kernel reads (the shape is kept)."""
    block = _k().WEIGHT_BLOCK
    o = w.shape[-1]
    per_group = w.reshape(groups, -1, o)
    flat = np.concatenate([per_group[:, :, b:b + block].reshape(groups, -1) for b in range(0, o, block)], axis=1)
    return np.ascontiguousarray(flat).reshape(w.shape)


def _weight_cache(module) -> dict:
    """The module's packed copies of its weight, emptied when its weight array is replaced (new weights)."""
    cache = module.__dict__.get("_kernel_weights")
    if cache is None or cache["weight"] is not module.weight:
        cache = {"weight": module.weight}
        object.__setattr__(module, "_kernel_weights", cache)  # not a parameter
    return cache


def _packed(module, key, select, blocks: bool = True) -> np.ndarray:
    """select(weight (O, kh, kw, C)) as (kh', kw', C, O'), O' = O rounded up to the vector width with zero
    channels, in blocks of output channels for the conv kernel (`_in_blocks`) unless `blocks` is False; kept on
    the module, per key and vector width, until its weight array is replaced (new weights)."""
    cache = _weight_cache(module)
    lanes = dispatch.lanes()
    if (lanes, key) not in cache:
        w = select(np.asarray(module.weight, dtype=np.float32))
        w = np.pad(w, [(0, -w.shape[0] % lanes), (0, 0), (0, 0), (0, 0)])
        w = np.ascontiguousarray(w.transpose(1, 2, 3, 0))
        cache[lanes, key] = _in_blocks(w) if blocks else w
    return cache[lanes, key]


def _packed_groups(module) -> np.ndarray:
    """A grouped conv1d's weight (O, k, C / G) as the kernel's (G * 1, k, C / G, O / G): group after group, each
    in blocks of output channels (`_in_blocks`)."""
    cache = _weight_cache(module)
    key = dispatch.lanes(), "groups"
    if key not in cache:
        (o, k, cg), g = module.weight.shape, module.groups
        w = np.asarray(module.weight, dtype=np.float32).reshape(g, o // g, k, cg)
        cache[key] = _in_blocks(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), g)
    return cache[key]


def _bias(module) -> np.ndarray | None:
    if "bias" not in module:
        return None
    b = np.asarray(module.bias, dtype=np.float32)
    return np.pad(b, (0, -b.shape[0] % dispatch.lanes()))


def _affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """bn.affine() on the host (float32: a half BatchNorm after a float32 conv is this conv's epilogue), kept on
    the module while its parameter arrays are the same objects."""
    params = tuple(bn.get(k) for k in ("weight", "bias", "running_mean", "running_var"))
    cached = bn.__dict__.get("_kernel_affine")
    if cached is None or any(a is not b for a, b in zip(cached[0], params, strict=True)):
        cached = (params, tuple(host(a if a.dtype == mx.float32 else a.astype(mx.float32)) for a in bn.affine()))
        object.__setattr__(bn, "_kernel_affine", cached)  # not a parameter
    return cached[1]


warn_if_missing()  # once, when the first model module loads the kernels
