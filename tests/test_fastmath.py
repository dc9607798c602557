"""The arithmetic transcendentals are as accurate as torch's float32 kernels, across the whole float range
that matters (saturation, tiny inputs, signed zeros), and agree with MLX's native ops."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch

from rvc_mlx import fastmath

RNG = np.random.default_rng(1)
X = np.concatenate([RNG.standard_normal(200_000) * 6, np.linspace(-12, 12, 40_001),
                    [0.0, -0.0, 1e-8, -1e-8, 1e-30, 88.0, -88.0, -100.0, 100.0, 30.0, -30.0]]).astype(np.float32)
FUNCS = {
    "exp": (fastmath.exp, torch.exp, np.clip(X, -80, 80)),
    "erf": (fastmath.erf, torch.erf, X),
    "gelu": (fastmath.gelu, torch.nn.functional.gelu, X),
    "sigmoid": (fastmath.sigmoid, torch.sigmoid, X),
    "tanh": (fastmath.tanh, torch.tanh, X),
    "silu": (fastmath.silu, torch.nn.functional.silu, X),
}
# max error relative to the output's absmax (exp: pointwise relative), as a multiple of one float32 ulp at 1.0
ULPS = {"exp": 2, "erf": 8, "gelu": 2, "sigmoid": 2, "tanh": 2, "silu": 2}


@pytest.mark.parametrize("name", list(FUNCS))
def test_fast_transcendental_is_within_a_few_ulps_of_float64(name):
    fast, ref_fn, x = FUNCS[name]
    ref = ref_fn(torch.from_numpy(x).double()).numpy()
    got = np.array(fast(mx.array(x))).astype(np.float64)
    assert got.shape == ref.shape and np.isfinite(got).all()
    if name == "exp":
        err = np.max(np.abs(got - ref) / ref)
    else:
        err = np.max(np.abs(got - ref)) / np.abs(ref).max()
    assert err <= ULPS[name] * 2.0 ** -23, f"{name}: {err:.2e}"


def test_fast_transcendentals_keep_signs_and_saturate():
    x = mx.array(np.array([-1e4, -50.0, -0.0, 0.0, 50.0, 1e4], np.float32))
    assert np.array_equal(np.array(fastmath.tanh(x)), [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])
    sig = np.array(fastmath.sigmoid(x))
    assert 0.0 <= sig[0] < 1e-37 and sig[5] == 1.0
    assert np.array(fastmath.exp(mx.array([-1e4], mx.float32)))[0] < 1e-37


def test_softmax_matches_native_mlx_and_sums_to_one():
    s = mx.array((RNG.standard_normal((3, 40, 50)) * 5).astype(np.float32))
    fast = np.array(fastmath.softmax(s, axis=-1))
    native = np.array(mx.softmax(s, axis=-1, precise=True))
    assert np.abs(fast - native).max() < 1e-6
    assert np.allclose(fast.sum(-1), 1.0, atol=1e-6)


def test_activation_modules_are_the_functions():
    x = mx.array(RNG.standard_normal((4, 10)).astype(np.float32))
    assert np.array_equal(np.array(fastmath.GELU()(x)), np.array(fastmath.gelu(x)))
    assert np.array_equal(np.array(fastmath.SiLU()(x)), np.array(fastmath.silu(x)))
    assert np.array_equal(np.array(fastmath.Tanh()(x)), np.array(fastmath.tanh(x)))
    assert np.array_equal(np.array(fastmath.Sigmoid()(x)), np.array(fastmath.sigmoid(x)))
    a, b = np.split(np.array(x), 2, axis=-1)
    glu = np.array(fastmath.GLU(axis=-1)(x))
    assert np.abs(glu - a / (1 + np.exp(-b))).max() < 1e-6
    assert np.abs(np.array(fastmath.gelu(x)) - np.array(nn.gelu(x))).max() < 1e-6


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "silu", "gelu"])
def test_small_inputs_keep_their_relative_accuracy(name):
    # tanh via (1 - e^-2|x|) / (1 + e^-2|x|) cancels for small |x| (relative error ~ulp/|x|): the polynomial branch
    fast, ref_fn, _ = FUNCS[name]
    mag = np.logspace(-6, 0, 20_001)
    x = np.concatenate([mag, -mag]).astype(np.float32)
    ref = ref_fn(torch.from_numpy(x).double()).numpy()
    rel = lambda v: np.max(np.abs(np.asarray(v, dtype=np.float64) - ref) / np.abs(ref))  # noqa: E731
    err, err_torch = rel(np.array(fast(mx.array(x)))), rel(ref_fn(torch.from_numpy(x)).numpy())
    assert err <= max(4 * 2.0 ** -23, 2 * err_torch), f"{name}: {err:.2e} (torch float32 {err_torch:.2e})"
