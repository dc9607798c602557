"""The fast MLX building blocks compute what torch computes: each layer against torch in float64 on random
weights, with an error no worse than 2x torch's own float32 error (plus a floor of a few float32 ulps)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvc_mlx import dispatch, layers

RNG = np.random.default_rng(0)


def _randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def mlx_path(pure_mlx):
    """The layer's own MLX path: without the CPU kernels (tested in test_cpu_kernels), which would take the call."""


def _check(mlx_out, ref64: torch.Tensor, torch32: torch.Tensor):
    ref = ref64.numpy()
    scale = np.abs(ref).max()
    err_mlx = np.abs(np.asarray(mlx_out, dtype=np.float64) - ref).max() / scale
    err_torch = np.abs(torch32.double().numpy() - ref).max() / scale
    assert np.asarray(mlx_out).shape == ref.shape
    assert err_mlx <= 2 * err_torch + 2.4e-7, f"MLX error {err_mlx:.2e} vs torch float32 {err_torch:.2e}"


@pytest.mark.parametrize("c_in,c_out,k,dilation,length", [(8, 6, 3, 1, 50), (16, 16, 11, 5, 300), (4, 3, 7, 3, 40)])
def test_conv1d_shifted_gemms_match_torch(c_in, c_out, k, dilation, length, mlx_path):
    x, w, b = _randn(2, c_in, length), _randn(c_out, c_in, k, scale=0.3), _randn(c_out)
    pad = dilation * (k - 1) // 2
    conv = layers.Conv1d(c_in, c_out, k, dilation=dilation, padding=pad)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    y = conv(mx.array(x.transpose(0, 2, 1)))
    args = dict(padding=pad, dilation=dilation)
    ref = F.conv1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **args)
    t32 = F.conv1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **args)
    _check(np.array(y).transpose(0, 2, 1), ref, t32)


@pytest.mark.parametrize("host", [True, False], ids=["host-gemm", "mlx-gemm"])
@pytest.mark.parametrize("c_in,c_out,k,stride,pad,length", [
    (1, 8, 10, 5, 0, 403), (8, 8, 3, 2, 0, 81), (8, 6, 2, 2, 0, 40), (1, 6, 20, 10, 5, 200), (4, 5, 6, 3, 2, 64),
    (3, 4, 2, 3, 0, 31), (5, 7, 7, 3, 2, 66), (1, 3, 3, 2, 0, 3)])
def test_conv1d_strided_frame_fold_matches_torch(c_in, c_out, k, stride, pad, length, host, monkeypatch):
    # HuBERT's feature extractor (k10 s5, k3 s2, k2 s2), the NSF noise convs (k = 2s, pad s/2), k not a multiple of
    # s (with padding), k < s, one output frame; on the host GEMMs (k mod s != 0: MLX's matmul would copy the last
    # tap's rows) and on MLX's
    if not host:
        monkeypatch.setattr(dispatch, "blas_on_host", lambda: False)
    x, w, b = _randn(2, c_in, length), _randn(c_out, c_in, k, scale=0.3), _randn(c_out)
    conv = layers.Conv1d(c_in, c_out, k, stride=stride, padding=pad)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    xm = mx.array(x).transpose(0, 2, 1)  # a strided view: the host GEMMs read it made contiguous
    on_host = host and k % stride != 0 and dispatch.variant() is not None and dispatch.blas_on_host()
    assert dispatch.conv1d(xm, conv.weight.shape, 1, stride, 1) == ("gemm strided host" if on_host else "gemm strided")
    y = conv(xm)
    args = dict(stride=stride, padding=pad)
    ref = F.conv1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **args)
    _check(np.array(y).transpose(0, 2, 1), ref, F.conv1d(torch.from_numpy(x), torch.from_numpy(w),
                                                         torch.from_numpy(b), **args))


def test_depthwise_conv1d_taps_match_torch():
    x, w, b = _randn(2, 24, 90), _randn(24, 1, 31, scale=0.3), _randn(24)
    conv = layers.Conv1d(24, 24, 31, padding=15, groups=24)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    y = conv(mx.array(x.transpose(0, 2, 1)))
    args = dict(padding=15, groups=24)
    ref = F.conv1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **args)
    _check(np.array(y).transpose(0, 2, 1), ref, F.conv1d(torch.from_numpy(x), torch.from_numpy(w),
                                                         torch.from_numpy(b), **args))


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,out_pad",
                         [(8, 4, 16, 8, 4, 0), (6, 3, 4, 2, 1, 1), (5, 2, 3, 2, 1, 1)])
def test_conv_transpose1d_overlap_add_matches_torch(c_in, c_out, k, stride, pad, out_pad, mlx_path):
    x, w, b = _randn(2, c_in, 30), _randn(c_in, c_out, k, scale=0.3), _randn(c_out)
    conv = layers.ConvTranspose1d(c_in, c_out, k, stride=stride, padding=pad, output_padding=out_pad)
    conv.weight, conv.bias = mx.array(w.transpose(1, 2, 0)), mx.array(b)
    y = conv(mx.array(x.transpose(0, 2, 1)))
    args = dict(stride=stride, padding=pad, output_padding=out_pad)
    ref = F.conv_transpose1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                             **args)
    t32 = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **args)
    _check(np.array(y).transpose(0, 2, 1), ref, t32)


@pytest.mark.parametrize("c_in,c_out,k,pad,hw", [(16, 16, 3, 1, (40, 32)), (3, 5, 3, 1, (7, 5)), (4, 6, 1, 0, (9, 6)),
                                                 (2, 3, 3, 0, (6, 8)), (64, 8, 3, 1, (6, 5)), (1, 8, 3, 1, (7, 6)),
                                                 (64, 8, 3, 1, (48, 50))])
def test_conv2d_flat_row_gemms_match_torch(c_in, c_out, k, pad, hw, mlx_path):
    x, w, b = _randn(2, c_in, *hw), _randn(c_out, c_in, k, k, scale=0.3), _randn(c_out)
    conv = layers.Conv2d(c_in, c_out, k, padding=pad)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 3, 1)), mx.array(b)
    y = conv(mx.array(x.transpose(0, 2, 3, 1)))
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                   padding=pad)
    t32 = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=pad)
    _check(np.array(y).transpose(0, 3, 1, 2), ref, t32)


@pytest.mark.parametrize("stride,out_pad,hw", [((2, 2), (1, 1), (9, 8)), ((1, 2), (0, 1), (5, 4)),
                                               ((2, 2), (0, 0), (3, 3))])
def test_conv_transpose2d_overlap_add_matches_torch(stride, out_pad, hw, mlx_path):
    x, w = _randn(2, 6, *hw), _randn(6, 4, 3, 3, scale=0.3)
    conv = layers.ConvTranspose2d(6, 4, 3, stride=stride, padding=1, output_padding=out_pad, bias=False)
    conv.weight = mx.array(w.transpose(1, 2, 3, 0))
    y = conv(mx.array(x.transpose(0, 2, 3, 1)))
    args = dict(stride=stride, padding=1, output_padding=out_pad)
    ref = F.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), **args)
    _check(np.array(y).transpose(0, 3, 1, 2), ref, F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), **args))


def test_tap_conv2d_matches_torch_on_k_by_1_kernels():
    x, w, b = _randn(1, 8, 70, 1), _randn(5, 8, 16, 1, scale=0.2), _randn(5)
    conv = layers.TapConv2d(8, 5, (16, 1))
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 3, 1)), mx.array(b)
    y = conv(mx.array(x.transpose(0, 2, 3, 1)))
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double())
    _check(np.array(y).transpose(0, 3, 1, 2), ref, F.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                            torch.from_numpy(b)))


def test_batchnorm_eval_matches_torch():
    x = _randn(2, 7, 5, 6, scale=3.0)
    stats = dict(mean=_randn(6), var=np.abs(_randn(6)) + 0.1, weight=_randn(6), bias=_randn(6))
    bn = layers.BatchNorm(6, eps=1e-3)
    bn.running_mean, bn.running_var = mx.array(stats["mean"]), mx.array(stats["var"])
    bn.weight, bn.bias = mx.array(stats["weight"]), mx.array(stats["bias"])
    bn.eval()
    y = bn(mx.array(x))

    def ref(dtype):
        t = {k: torch.from_numpy(v).to(dtype) for k, v in stats.items()}
        xt = torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2)
        return F.batch_norm(xt, t["mean"], t["var"], t["weight"], t["bias"], False, 0.0, 1e-3).permute(0, 2, 3, 1)

    _check(y, ref(torch.float64), ref(torch.float32))


def _gru_matches_torch(bidirectional, hidden):
    g_t = torch.nn.GRU(12, hidden, batch_first=True, bidirectional=bidirectional)
    g_m = layers.GRU(12, hidden, bidirectional=bidirectional)
    g_m.load_weights([(k, mx.array(v.detach().numpy())) for k, v in g_t.state_dict().items()])
    x = _randn(2, 300, 12)
    out, h = g_m(mx.array(x))
    with torch.no_grad():
        ref, h_ref = g_t.double()(torch.from_numpy(x).double())
        t32, h32 = g_t.float()(torch.from_numpy(x))
    _check(out, ref, t32)
    _check(h, h_ref, h32)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("hidden", [16, 48])  # 3H = 48: scalar columns only; 144: vector blocks + a scalar tail
def test_gru_kernel_scan_matches_torch_over_a_long_sequence(isa, bidirectional, hidden):
    assert dispatch.gru(mx.zeros((1, 2, 12))) == dispatch.KERNEL
    _gru_matches_torch(bidirectional, hidden)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("hidden", [16, 48])
def test_gru_host_scan_without_the_kernels_matches_torch_over_a_long_sequence(pure_mlx, bidirectional, hidden):
    assert dispatch.gru(mx.zeros((1, 2, 12))) == "gemm numpy scan"
    _gru_matches_torch(bidirectional, hidden)


def test_mlx_native_conv_kernels_are_the_fallback_for_unsupported_settings():
    conv = layers.Conv2d(3, 4, 3, stride=2, padding=1)
    x = mx.array(_randn(1, 9, 9, 3))
    assert np.array_equal(np.array(conv(x)), np.array(nn.Conv2d.__call__(conv, x)))
    conv1 = layers.Conv1d(6, 6, 3, stride=2, groups=3)
    x1 = mx.array(_randn(1, 20, 6))
    assert np.array_equal(np.array(conv1(x1)), np.array(nn.Conv1d.__call__(conv1, x1)))


@pytest.mark.parametrize("fold", [1, 2, 3, 8])
def test_folded_tap_sum_equals_the_plain_shifted_gemm_sum(fold):
    rows, w0, w1 = _randn(50, 6), _randn(4, 6, 5, scale=0.3), _randn(3, 6, 5, scale=0.3)
    bias = _randn(5)
    n, groups = 37, [(0, w0), (9, w1)]  # two kernel rows, as Conv2d passes them
    y = layers.folded_tap_sum(mx.array(rows), [(b, mx.array(w)) for b, w in groups], n, mx.array(bias), fold=fold)
    ref = bias.astype(np.float64) + sum(rows[base + j:base + j + n].astype(np.float64) @ w[j]
                                        for base, w in groups for j in range(w.shape[0]))
    assert y.shape == (n, 5)
    np.testing.assert_allclose(np.array(y), ref, rtol=0, atol=1e-5)
