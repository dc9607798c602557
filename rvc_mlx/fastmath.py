"""Transcendental functions from +, *, / and bit shifts, fused by mx.compile: fast on MLX's Linux CPU build.

`libmlx.so` on Linux is built without AVX, and its exp / erf / tanh / sigmoid call scalar libm per element
(~40 M elements/s, 50-80x slower than torch). Its arithmetic ops are vectorised, so the classic polynomial forms
below, compiled into one kernel each, run ~10x faster than the native ops, with float32 errors at the level of
torch's own (a few ulp; tests/test_fastmath.py bounds each against float64). On other platforms (Metal, macOS
Accelerate) MLX's native ops are fast and used instead: `rvc_mlx.dispatch` chooses (RVC_MLX_MATH forces). Where
the C++ kernels run, GELU and softmax take them (the same polynomials, vectorised, one pass).
The polynomials are float32 forms: float16 / bfloat16 inputs always take MLX's ops.
"""

from __future__ import annotations

from rvc_mlx import cpu_kernels, dispatch
from rvc_mlx.runtime import mx, nn

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # Cody-Waite split of ln 2: n * LN2_HI is exact in float32
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
# erf(x) ~ x P(x^2) / Q(x^2) on |x| <= 3.8325 (erf is 1 to float32 beyond): max error 4e-8 in float64
_ERF_P = (2.2905065861350646e-4, 3.4082910107109506e-3, 5.0955695062380861e-2, 1.8520832239976145e-1,
          1.128379143519084)
_ERF_Q = (-1.1791602954361697e-7, 2.3547966471313185e-5, 1.0179625278914885e-3, 1.4070470171167667e-2,
          1.1098505178285362e-1, 4.9746925110067538e-1, 1.0)
_ERF_CLAMP = 3.832506856900711


def _horner(coeffs: tuple[float, ...], x: mx.array) -> mx.array:
    acc = coeffs[0] * x + coeffs[1]
    for c in coeffs[2:]:
        acc = acc * x + c
    return acc


def _exp_parts(x: mx.array) -> tuple[mx.array, mx.array]:
    # Cephes expf: x = n ln2 + r, |r| <= ln2/2; e^r by a degree-7 polynomial; 2^n as float32 exponent bits.
    # The bit view cannot sit inside a shapeless compiled graph, so e^x = er * view(bits) is finished outside.
    x = mx.clip(x, -87.33654, 88.0)
    n = mx.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI - n * _LN2_LO
    er = _horner(_EXP_P, r) * (r * r) + r + 1.0
    return er, mx.left_shift(n.astype(mx.int32) + 127, 23)


def _erf(x: mx.array) -> mx.array:
    x = mx.clip(x, -_ERF_CLAMP, _ERF_CLAMP)
    x2 = x * x
    return x * _horner(_ERF_P, x2) / _horner(_ERF_Q, x2)


def _gelu(x: mx.array) -> mx.array:
    return x * 0.5 * (1.0 + _erf(x * 0.7071067811865476))  # torch's exact (erf) GELU, same operation order


def _neg_parts(x: mx.array) -> tuple[mx.array, mx.array]:
    return _exp_parts(-x)


def _tanh_parts(x: mx.array) -> tuple[mx.array, mx.array]:
    return _exp_parts(-2.0 * mx.abs(x))  # e^(-2|x|) in (0, 1]: no overflow, symmetric error


def _mul(er: mx.array, scale: mx.array) -> mx.array:
    return er * scale


def _sigmoid_post(er: mx.array, scale: mx.array) -> mx.array:
    return 1.0 / (1.0 + er * scale)


def _silu_post(er: mx.array, scale: mx.array, x: mx.array) -> mx.array:
    return x / (1.0 + er * scale)


_TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)


def _tanh_post(er: mx.array, scale: mx.array, x: mx.array) -> mx.array:
    e = er * scale
    t = (1.0 - e) / (1.0 + e)
    # below |x| = 0.625, 1 - e cancels (relative error ~ulp/|x|): Cephes tanhf's odd polynomial there
    x2 = x * x
    small = _horner(_TANH_P, x2) * x2 * x + x
    return mx.where(mx.abs(x) < 0.625, small, mx.where(x < 0, -t, t))


_k = {f.__name__: mx.compile(f, shapeless=True) for f in (_exp_parts, _erf, _gelu, _neg_parts, _tanh_parts, _mul,
                                                          _sigmoid_post, _silu_post, _tanh_post)}


def _from_exp(parts: str, post: str, x: mx.array, *extra: mx.array) -> mx.array:
    """Compiled `parts` -> (e^r, 2^n as float32 bits), the bit view outside the compiled graph, compiled `post`."""
    er, bits = _k[parts](x)
    return _k[post](er, mx.view(bits, mx.float32), *extra)


def exp(x: mx.array) -> mx.array:
    return mx.exp(x) if dispatch.transcendental("exp", x) else _from_exp("_exp_parts", "_mul", x)


def erf(x: mx.array) -> mx.array:
    return mx.erf(x) if dispatch.transcendental("erf", x) else _k["_erf"](x)


def gelu(x: mx.array) -> mx.array:
    if dispatch.vectorised("gelu", x):
        return cpu_kernels.gelu(x)
    return nn.gelu(x) if dispatch.transcendental("gelu", x) else _k["_gelu"](x)


def sigmoid(x: mx.array) -> mx.array:
    return mx.sigmoid(x) if dispatch.transcendental("sigmoid", x) else _from_exp("_neg_parts", "_sigmoid_post", x)


def tanh(x: mx.array) -> mx.array:
    return mx.tanh(x) if dispatch.transcendental("tanh", x) else _from_exp("_tanh_parts", "_tanh_post", x, x)


def silu(x: mx.array) -> mx.array:
    return nn.silu(x) if dispatch.transcendental("silu", x) else _from_exp("_neg_parts", "_silu_post", x, x)


def softmax(x: mx.array, axis: int = -1, scale: float | None = None, overwrite: bool = False) -> mx.array:
    """Softmax (of x * scale, when given: attention's scaled scores) with float32 accumulation (MLX's precise=True;
    fastmath's float32 exp(x - max) / sum): a half softmax accumulated in half is ~10x less accurate, and torch and
    fairseq accumulate it in float32. `overwrite`: the caller holds x's only reference (the kernel may write the
    result over it)."""
    if axis in (-1, x.ndim - 1) and dispatch.vectorised("softmax", x):
        return cpu_kernels.softmax(x, 1.0 if scale is None else scale, in_place=overwrite)
    if scale is not None:
        x = x * scale
    if dispatch.transcendental("softmax", x):
        return mx.softmax(x, axis=axis, precise=True)
    e = exp(x - mx.max(x, axis=axis, keepdims=True))
    return e / mx.sum(e, axis=axis, keepdims=True)


class GELU(nn.Module):
    """torch.nn.GELU() (exact, erf form); any layout."""

    def __call__(self, x: mx.array) -> mx.array:
        return gelu(x)


class SiLU(nn.Module):
    """torch.nn.SiLU(); any layout."""

    def __call__(self, x: mx.array) -> mx.array:
        return silu(x)


class GLU(nn.Module):
    """torch.nn.GLU on `axis`: first half * sigmoid(second half); any layout."""

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def __call__(self, x: mx.array) -> mx.array:
        a, b = mx.split(x, 2, axis=self.axis)
        return a * sigmoid(b)


class Sigmoid(nn.Module):
    """torch.nn.Sigmoid(); any layout."""

    def __call__(self, x: mx.array) -> mx.array:
        return sigmoid(x)


class Tanh(nn.Module):
    """torch.nn.Tanh(); any layout."""

    def __call__(self, x: mx.array) -> mx.array:
        return tanh(x)
