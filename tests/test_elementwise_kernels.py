"""The elementwise kernels (softmax, GELU, per-channel GroupNorm + GELU; csrc/elementwise.cpp), in every build this
CPU runs (the `isa` fixture), compute what torch computes in float64 no worse than torch's own float32 error, over
row lengths and element counts that leave partial vectors; the layers take them only where dispatch says so."""

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvc_mlx import cpu_kernels, dispatch, fastmath, instrument
from rvc_mlx.config import HubertConfig
from rvc_mlx.hubert import GroupNormConvLayer

RNG = np.random.default_rng(11)


def _errors(out, ref64: torch.Tensor, t32: torch.Tensor) -> tuple[float, float]:
    ref = ref64.numpy()
    scale = np.abs(ref).max()
    assert np.asarray(out).shape == ref.shape
    return (np.abs(np.asarray(out, dtype=np.float64) - ref).max() / scale,
            np.abs(t32.double().numpy() - ref).max() / scale)


@pytest.mark.parametrize("rows,n", [(3, 1), (37, 7), (12, 50), (5, 517)])
def test_softmax_kernel_matches_torch_float64_copied_or_in_place(isa, rows, n):
    x = (RNG.standard_normal((2, rows, n)) * 20).astype(np.float32)
    t = torch.from_numpy(x)
    ref = torch.softmax(t.double() * 0.125, dim=-1)
    got = cpu_kernels.softmax(mx.array(x), 0.125)
    err, err_torch = _errors(got, ref, torch.softmax(t * 0.125, dim=-1))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)
    scores = mx.array(x) * 1.0  # an array only this test holds
    same = cpu_kernels.softmax(scores, 0.125, in_place=True)
    assert same is scores and np.array_equal(np.asarray(same), np.asarray(got))


def test_softmax_copies_an_input_it_cannot_overwrite(isa):
    x = mx.array((RNG.standard_normal((6, 40)) * 3).astype(np.float32))
    strided = x.T  # a transposed view: written over in place, it would corrupt x
    before = np.array(x)
    y = cpu_kernels.softmax(strided, 1.0, in_place=True)
    assert np.array_equal(np.array(x), before)
    np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 7, 1000, 70_003])
def test_gelu_kernel_matches_torch_float64(isa, n):
    x = np.concatenate([RNG.standard_normal(n) * 4, [0.0, -0.0, 1e-30, -9.0, 9.0, 40.0, -40.0]]).astype(np.float32)
    t = torch.from_numpy(x)
    got = cpu_kernels.gelu(mx.array(x))
    err, err_torch = _errors(got, F.gelu(t.double()), F.gelu(t))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)
    assert np.asarray(got)[-5] == -0.0 or abs(np.asarray(got)[-5]) < 1e-18  # GELU(-9) rounds to (minus) zero


@pytest.mark.parametrize("channels,frames,offset", [(32, 1, 0.0), (48, 301, 3.0), (512, 1000, 50.0)])
def test_group_norm_gelu_kernel_matches_torch_float64_no_worse_than_the_ops_in_turn(isa, channels, frames, offset):
    cfg = HubertConfig(conv_dim=(channels,), conv_kernel=(3,), conv_stride=(1,))
    layer = GroupNormConvLayer(cfg, 0)
    gamma, beta = RNG.standard_normal(channels).astype(np.float32), RNG.standard_normal(channels).astype(np.float32)
    layer.layer_norm.weight, layer.layer_norm.bias = mx.array(gamma), mx.array(beta)
    # a large common offset: the per-channel mean must be taken before the squares (two passes)
    x = (RNG.standard_normal((2, frames, channels)) * 2 + offset).astype(np.float32)
    fused = np.array(cpu_kernels.group_norm_gelu(layer.layer_norm, mx.array(x)))
    with instrument.layers():
        ops = np.array(layer.activation(layer.layer_norm(mx.array(x))))
    t = torch.from_numpy(x).permute(0, 2, 1)
    norm = torch.nn.GroupNorm(channels, channels, eps=cfg.group_norm_eps)
    norm.weight.data, norm.bias.data = torch.from_numpy(gamma), torch.from_numpy(beta)
    with torch.no_grad():
        ref = F.gelu(norm.double()(t.double())).permute(0, 2, 1)
        t32 = F.gelu(norm.float()(t)).permute(0, 2, 1)
    err, err_torch = _errors(fused, ref, t32)
    err_ops, _ = _errors(ops, ref, t32)
    # no worse than torch, nor than MLX's GroupNorm -> GELU (whose float32 sums lose the mean's low bits far from 0)
    assert err <= 2 * err_torch + 2.4e-7 and err <= err_ops + 2.4e-7, (err, err_torch, err_ops)


def test_elementwise_kernels_run_only_where_dispatch_chooses_them(isa):
    x = mx.array(RNG.standard_normal((4, 64)).astype(np.float32))
    assert dispatch.vectorised("gelu", x)
    with dispatch.use_math("mlx"):  # the kernels compute fastmath's polynomials: not with MLX's transcendentals
        assert not dispatch.vectorised("gelu", x)
    assert not dispatch.vectorised("softmax", x.astype(mx.float16))
    with dispatch.use_kernels(False):
        assert not dispatch.vectorised("softmax", x)
        without = np.array(fastmath.softmax(x, scale=0.5))
    np.testing.assert_allclose(np.array(fastmath.softmax(x, scale=0.5)), without, rtol=0, atol=1e-6)


def test_elementwise_kernels_refuse_mismatched_buffers(isa):
    k = dispatch.kernels()
    with pytest.raises(ValueError, match="rows, n"):
        k.softmax(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), 1.0)
    with pytest.raises(ValueError, match="C a multiple"):
        k.group_norm_gelu(np.zeros((1, 5, 3), np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32),
                          np.zeros((1, 5, 3), np.float32), 1e-5, True)
    with pytest.raises(ValueError, match="float32"):
        k.gelu(np.zeros(4, np.float64), np.zeros(4, np.float64))
