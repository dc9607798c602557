"""The transformer kernels (csrc/attention.cpp, csrc/gemm.cpp, LayerNorm in csrc/elementwise.cpp), in every build
this CPU runs (the `isa` fixture), compute what torch computes in float64, no worse than torch's own float32 error:
multi-head attention over query blocks, key passes and padded key blocks at their boundaries; Linear layers over
row blocks, input blocks and column panels at theirs; LayerNorm of a residual sum, of offset inputs too. HuBERT's
layers take them where dispatch says, and MLX's ops without the kernels."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from rvc_common import instrument
from rvc_common.config import HubertConfig
from rvc_mlx import cpu_kernels, dispatch
from rvc_mlx.hubert import Attention
from rvc_mlx.layers import Linear
from rvc_mlx.norms import LayerNorm


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([23, *(int(round(k * 10)) if isinstance(k, float) else int(k) for k in key)])


def _errors(out, ref64: torch.Tensor, t32: torch.Tensor) -> tuple[float, float]:
    ref = ref64.numpy()
    scale = np.abs(ref).max()
    return (np.abs(np.asarray(out, dtype=np.float64) - ref).max() / scale,
            np.abs(t32.double().numpy() - ref).max() / scale)


def _torch_attention(q, k, v, heads: int, scale: float) -> torch.Tensor:
    b, t, e = q.shape
    q, k, v = (a.reshape(b, t, heads, e // heads).transpose(1, 2) for a in (q, k, v))
    out = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
    return out.transpose(1, 2).reshape(b, t, e)


# (batch, frames, heads, rows per work item): one frame; a tail under one register block; query blocks of 7 rows
# (ragged) over 300 keys (key passes of 128, the last one short, a padded key block); 256 keys (two whole passes);
# HuBERT's shape at 10 s of audio
ATTENTION_CASES = [(1, 1, 2, 24), (2, 13, 3, 24), (1, 300, 2, 7), (1, 256, 2, 48), (1, 499, 12, 48)]


@pytest.mark.parametrize("batch,frames,heads,rows", ATTENTION_CASES)
def test_attention_kernel_matches_torch_float64(isa, batch, frames, heads, rows):
    head_dim = 64
    q, k, v = (_rng(batch, frames, heads, i).standard_normal((batch, frames, heads * head_dim)).astype(np.float32)
               * 2 for i in range(3))
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    ref = _torch_attention(tq.double(), tk.double(), tv.double(), heads, 0.125)
    got = cpu_kernels.attention(mx.array(q), mx.array(k), mx.array(v), heads, 0.125, rows)
    err, err_torch = _errors(got, ref, _torch_attention(tq, tk, tv, heads, 0.125))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)


def test_attention_kernel_refuses_head_dims_it_cannot_block(isa):
    x = np.zeros((1, 5, 2 * 20), np.float32)
    with pytest.raises(ValueError, match="D a multiple of"):
        dispatch.kernels().attention(x, x, x, x.copy(), 2, 0.5, 4)


def test_hubert_attention_takes_the_kernel_in_query_blocks_and_mlx_ops_layer_by_layer(isa):
    cfg = HubertConfig(hidden_size=128, num_attention_heads=2, intermediate_size=256)
    attn = Attention(cfg)
    x = mx.array(_rng(5).standard_normal((1, 30, 128)).astype(np.float32))
    with dispatch.use_chunks(attention_rows=8), instrument.Seen() as seen:
        fast, weights = attn(x)
    assert weights is None and f"kernel attention {isa}" in seen.impls
    assert seen.splits == {"hubert attention query chunks": 4}
    with instrument.layers(), instrument.Seen() as seen:
        slow, weights = attn(x)
    assert weights is not None and "mlx attention" in seen.impls and not seen.splits
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=0, atol=2e-6)


# (rows, inputs, outputs, bias): one row (a register block of padding rows) over one panel; a block and one row
# over 300 inputs (input blocks of 256, the last short); 5 inputs, no bias; HuBERT's feed-forward at 10 s of audio
LINEAR_CASES = [(1, 64, 32, True), (13, 300, 96, True), (7, 5, 64, False), (499, 768, 3072, True)]


@pytest.mark.parametrize("rows,inputs,outputs,bias", LINEAR_CASES)
def test_linear_kernel_matches_torch_float64(isa, rows, inputs, outputs, bias):
    rng = _rng(rows, inputs, outputs, bias)
    x = rng.standard_normal((1, rows, inputs)).astype(np.float32)
    w = (rng.standard_normal((outputs, inputs)) / inputs ** 0.5).astype(np.float32)
    b = rng.standard_normal(outputs).astype(np.float32) if bias else None
    layer = Linear(inputs, outputs, bias=bias)
    layer.weight = mx.array(w)
    if bias:
        layer.bias = mx.array(b)
    with instrument.Seen() as seen:
        got = layer(mx.array(x))
    assert seen.impls == {f"kernel linear {isa}"}
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b)
    ref = torch.nn.functional.linear(tx.double(), tw.double(), None if tb is None else tb.double())
    err, err_torch = _errors(got, ref, torch.nn.functional.linear(tx, tw, tb))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)


def test_linear_takes_mlx_for_outputs_that_are_not_whole_panels_and_without_the_kernels(isa):
    x = mx.array(_rng(3).standard_normal((2, 9, 24)).astype(np.float32))
    for outputs, kernels in ((20, True), (32, False)):
        layer = Linear(24, outputs)
        with dispatch.use_kernels(kernels), instrument.Seen() as seen:
            y = layer(x)
        assert seen.impls == {"mlx linear"}, (outputs, kernels)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(mx.addmm(layer.bias, x, layer.weight.T)))


def test_linear_kernel_repacks_a_replaced_weight_and_refuses_a_packing_that_does_not_fit(isa):
    layer = Linear(16, 32)
    x = mx.array(_rng(4).standard_normal((3, 16)).astype(np.float32))
    layer(x)
    layer.weight = layer.weight * 2  # new weights: the packed copy of the old ones must not be used
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(mx.addmm(layer.bias, x, layer.weight.T)),
                               rtol=1e-6, atol=1e-6)
    wide = 2 * dispatch.lanes()
    with pytest.raises(ValueError, match="must agree"):
        dispatch.kernels().linear(np.zeros((3, 16), np.float32), np.zeros((1, 8, wide), np.float32), None,
                                  np.zeros((3, wide), np.float32))


# (rows, channels, offset, residual): one AVX-512 vector; HuBERT's projection (512) and encoder (768) widths;
# values far from zero
LAYER_NORM_CASES = [(1, 16, 0.0, False), (37, 512, 0.0, False), (499, 768, 0.0, True), (64, 768, 50.0, True)]


@pytest.mark.parametrize("rows,channels,offset,residual", LAYER_NORM_CASES)
def test_layer_norm_kernel_matches_torch_float64(isa, rows, channels, offset, residual):
    rng = _rng(rows, channels, offset, residual)
    x = (rng.standard_normal((1, rows, channels)) + offset).astype(np.float32)
    r = rng.standard_normal((1, rows, channels)).astype(np.float32) if residual else None
    w, b = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    norm = LayerNorm(channels, eps=1e-5)
    norm.weight, norm.bias = mx.array(w), mx.array(b)
    assert dispatch.kernel_for(mx.array(x), channels)
    got = norm(mx.array(x), None if r is None else mx.array(r))
    tx = torch.from_numpy(x) + (0 if r is None else torch.from_numpy(r))  # the sum in float32, as both compute it
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    ref = torch.nn.functional.layer_norm(tx.double(), (channels,), tw.double(), tb.double(), 1e-5)
    err, err_torch = _errors(got, ref, torch.nn.functional.layer_norm(tx, (channels,), tw, tb, 1e-5))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)


def test_layer_norm_falls_back_to_mlx_without_the_kernels():
    norm = LayerNorm(16)
    x, r = (mx.array(_rng(9, i).standard_normal((2, 3, 16)).astype(np.float32)) for i in range(2))
    with dispatch.use_kernels(False), instrument.Seen() as seen:
        y = norm(x, r)
    assert not any(u.startswith("kernel") for u in seen.impls)
    np.testing.assert_allclose(np.asarray(y), np.asarray(mx.fast.layer_norm(x + r, norm.weight, norm.bias, 1e-5)),
                               rtol=0, atol=1e-6)
