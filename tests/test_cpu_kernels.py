"""The CPU kernels (csrc/ via rvc_mlx.cpu_kernels), in every build this CPU runs (the `isa` fixture: avx512, avx2,
generic), compute what torch computes in float64, no worse than torch's own float32 error. Their fused epilogues
(BatchNorm, ReLU, residual) equal MLX's ops in turn bit for bit: the same kernel sums the conv in the same order
either way, and each epilogue step rounds once, as MLX's elementwise ops do (MLX JIT-compiles them for the
baseline ISA: no FMA contraction). The layers fall back to their MLX paths with the kernels off. The elementwise
kernels (softmax, GELU, GroupNorm + GELU) run only where dispatch chooses them."""

import importlib.util
import platform
import shutil
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvc_common import instrument
from rvc_common.config import HubertConfig
from rvc_mlx import cpu_kernels, dispatch, fastmath, layers
from rvc_mlx.hubert import GroupNormConvLayer
from rvc_mlx.rmvpe import ConvBlockRes
from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder

RNG = np.random.default_rng(7)


def _randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _errors(out, ref64: torch.Tensor, t32: torch.Tensor) -> tuple[float, float]:
    ref = ref64.numpy()
    scale = np.abs(ref).max()
    assert np.asarray(out).shape == ref.shape
    return (np.abs(np.asarray(out, dtype=np.float64) - ref).max() / scale,
            np.abs(t32.double().numpy() - ref).max() / scale)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernels are built on Linux only")
def test_every_kernel_build_is_installed_on_linux_and_the_widest_runnable_one_is_used():
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    want = ("avx512", "avx2", "generic") if x86 else ("generic",)
    assert dispatch.built() == want, f"{dispatch.status()}: run `make test` (pip install -e . builds them)"
    assert dispatch.runnable(), dispatch.status()
    if dispatch.settings().isa is None:  # (RVC_MLX_ISA unset)
        assert dispatch.variant() == dispatch.runnable()[0]
    if x86:  # CPUID (rvc_mlx._cpu) agrees with the kernel's view of this CPU
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
        for feature in ("avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"):
            assert (feature in dispatch.cpu_features()) == (feature in flags), feature
        assert dispatch.runnable() == tuple(v for v in want if set(dispatch.NEEDS[v]) <= flags)
    assert dispatch.kernels().LANES == {"avx512": 16, "avx2": 8, "generic": 4}[dispatch.variant()]
    assert dispatch.conv2d(mx.array(_randn(1, 6, 20, 16)), (16, 3, 3, 16), (1, 1), True) == dispatch.KERNEL


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or shutil.which("objdump") is None,
                    reason="inspects x86 machine code with binutils' objdump")
def test_each_kernel_build_holds_only_its_own_isa_and_the_cpuid_probe_only_the_baseline():
    """No -march=native: an install copied to another x86 machine runs (rvc_mlx._cpu is probed first)."""
    def registers(module: str) -> set[str]:
        asm = subprocess.run(["objdump", "-d", importlib.util.find_spec(module).origin], capture_output=True,
                             text=True, check=True).stdout
        return {r for r in ("xmm", "ymm", "zmm") if f"%{r}" in asm}

    widest = {"avx512": "zmm", "avx2": "ymm", "generic": "xmm"}
    for isa in dispatch.built():
        found = registers(f"rvc_mlx._kernels_{isa}")
        assert max(found, key=["xmm", "ymm", "zmm"].index) == widest[isa], (isa, found)
    assert registers("rvc_mlx._cpu") <= {"xmm"}


def test_a_build_this_cpu_cannot_run_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(dispatch, "cpu_features", lambda: frozenset())
    monkeypatch.setattr(dispatch, "built", lambda: ("avx512", "avx2", "generic"))
    assert dispatch.runnable() == ("generic",)
    with pytest.raises(dispatch.KernelError, match=r"^this CPU cannot run the avx2 kernels \(it lacks avx2, fma\)"):
        dispatch.use_isa("avx2")
    with pytest.raises(dispatch.KernelError, match="unknown kernel build 'sse9'"):
        dispatch.use_isa("sse9")


# (batch, C, O, kernel, padding, (H, W)): wide rows (one row per block), narrow rows (a window of rows per block),
# C = 1, O not a multiple of the vector width (zero-padded channels), more channels than one pass sums (chunks),
# an asymmetric kernel, padding 2 and none; narrow images split into several windows of rows, and into work
# items of 64 output channels with a narrower last one (160 = 64 + 64 + 32).
CONV_CASES = [(2, 16, 16, 3, 1, (9, 40)), (1, 1, 16, 3, 1, (12, 17)), (1, 32, 3, 3, 1, (10, 19)),
              (1, 96, 160, 3, 1, (6, 5)), (2, 16, 64, 3, 1, (70, 8)), (1, 48, 80, 3, 1, (40, 4)),
              (1, 96, 48, 3, 1, (6, 5)), (2, 8, 32, (2, 3), (0, 2), (7, 30)), (1, 128, 128, 3, 1, (5, 16)),
              (1, 16, 32, 5, 2, (8, 21)), (1, 24, 16, 3, 0, (9, 20)), (3, 40, 16, 1, 0, (4, 3))]


@pytest.mark.parametrize("batch,c_in,c_out,k,pad,hw", CONV_CASES)
def test_conv2d_kernel_matches_torch_float64(isa, batch, c_in, c_out, k, pad, hw):
    x, w, b = _randn(batch, c_in, *hw), _randn(c_out, c_in, *np.broadcast_to(k, 2), scale=0.3), _randn(c_out)
    conv = layers.Conv2d(c_in, c_out, k, padding=pad)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 3, 1)), mx.array(b)
    y = cpu_kernels.conv2d(conv, mx.array(x.transpose(0, 2, 3, 1)), tuple(np.broadcast_to(pad, 2)))
    args = dict(padding=pad)
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **args)
    err, err_torch = _errors(np.array(y).transpose(0, 3, 1, 2), ref,
                             F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **args))
    # one sequential sum over kh*kw*C per output: up to ~2x torch's blocked sum, still float32-exact in kind
    assert err <= 3 * err_torch + 2.4e-7, f"kernel error {err:.2e} vs torch float32 {err_torch:.2e}"


# (kernel, stride, padding, output padding, (H, W)): RMVPE's decoder, an even kernel, unequal strides, and a stride
# larger than the kernel (phases no tap reaches hold the bias alone).
TRANSPOSED_CASES = [(3, 2, 1, 1, (8, 5)), (4, 2, 1, 0, (5, 7)), (3, (1, 2), (1, 0), (0, 1), (6, 6)),
                    (5, 3, 2, 1, (4, 9)), (2, 3, 0, 0, (5, 5))]


@pytest.mark.parametrize("k,stride,pad,out_pad,hw", TRANSPOSED_CASES)
def test_conv_transpose2d_phases_match_torch_float64(isa, k, stride, pad, out_pad, hw):
    x, w, b = _randn(2, 16, *hw), _randn(16, 32, k, k, scale=0.3), _randn(32)
    conv = layers.ConvTranspose2d(16, 32, k, stride=stride, padding=pad, output_padding=out_pad)
    conv.weight, conv.bias = mx.array(w.transpose(1, 2, 3, 0)), mx.array(b)
    y = conv(mx.array(x.transpose(0, 2, 3, 1)))
    args = dict(stride=stride, padding=pad, output_padding=out_pad)
    ref = F.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                             **args)
    err, err_torch = _errors(np.array(y).transpose(0, 3, 1, 2), ref, F.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **args))
    assert err <= 3 * err_torch + 2.4e-7, f"kernel error {err:.2e} vs torch float32 {err_torch:.2e}"


def _block(c_in, c_out):
    mx.random.seed(c_in * 100 + c_out)
    block = ConvBlockRes(c_in, c_out)
    block.eval()
    for bn in (block.conv[1], block.conv[4]):  # non-trivial statistics, so that the affine step changes values
        bn.running_mean = mx.random.normal((c_out,)) * 0.1
        bn.running_var = mx.random.uniform(0.5, 2.0, (c_out,))
        bn.weight, bn.bias = mx.random.normal((c_out,)), mx.random.normal((c_out,))
    return block


def _layer_by_layer(block, x):
    y = x
    for layer in block.conv:
        y = layer(y)
    return y + (block.shortcut(x) if "shortcut" in block else x)


@pytest.mark.parametrize("c_in,c_out,hw", [(16, 16, (40, 128)), (16, 32, (20, 64)), (64, 64, (9, 33)),
                                           (32, 32, (6, 4))])
def test_fused_conv_bn_relu_residual_equals_the_layer_by_layer_ops_bit_for_bit(isa, c_in, c_out, hw):
    block = _block(c_in, c_out)
    x = mx.random.normal((2, *hw, c_in))
    np.testing.assert_array_equal(np.array(block(x)), np.array(_layer_by_layer(block, x)))


# (C, O, kernel, stride, padding, output padding, (H, W)): RMVPE's decoder step, asymmetric strides, phases no tap
# reaches (kernel 2 < stride 3: the bias alone, through the epilogue), and O not a multiple of the vector width
# (the layers in turn).
@pytest.mark.parametrize("c_in,c_out,k,stride,pad,out_pad,hw", [
    (64, 32, 3, (2, 2), 1, (1, 1), (32, 4)), (16, 16, 3, (1, 2), (1, 0), (0, 1), (8, 5)),
    (16, 32, 2, 3, 0, 0, (5, 5)), (16, 8, 3, 2, 1, 1, (6, 6))])
def test_fused_transposed_conv_bn_relu_equals_the_layer_by_layer_ops_bit_for_bit(isa, c_in, c_out, k, stride, pad,
                                                                                 out_pad, hw):
    mx.random.seed(c_in + c_out)
    tconv = layers.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=pad, output_padding=out_pad)
    bn = layers.BatchNorm(c_out)
    bn.running_mean, bn.running_var = mx.random.normal((c_out,)), mx.random.uniform(0.5, 2.0, (c_out,))
    bn.weight, bn.bias = mx.random.normal((c_out,)), mx.random.normal((c_out,))
    bn.eval()
    x = mx.random.normal((2, *hw, c_in))
    np.testing.assert_array_equal(np.array(tconv.conv_bn_relu(x, bn)), np.array(nn.relu(bn(tconv(x)))))


def test_a_recording_observes_the_fused_block_and_layer_by_layer_mode_calls_every_layer(isa):
    block = _block(16, 32)
    x = mx.random.normal((1, 8, 20, 16))
    unobserved = np.array(block(x))
    layouts = LayoutMap((LayoutRule("*", "NHWC"),))
    with MLXRecorder(block, layouts) as rec:  # the shipped path: the recorder never changes what runs
        y = block(x)
    np.testing.assert_array_equal(np.array(y), unobserved)
    assert set(rec.records) == {"model", "shortcut", "conv.2"}  # conv.2: the first fused pass, as its ReLU's output
    assert rec.calls["model"].own == (f"kernel conv2d+bn+relu {isa}", f"kernel conv2d+bn+relu+add {isa}")
    assert rec.calls["conv.2"].reported and rec.calls["conv.2"].own == (f"kernel conv2d+bn+relu {isa}",)
    with MLXRecorder(block, layouts, layer_by_layer=True) as rec:
        block(x)
    assert {"conv.0", "conv.1", "conv.2", "conv.4", "shortcut"} <= set(rec.records)


def test_new_weights_replace_the_packed_copy(isa):
    conv = layers.Conv2d(8, 16, 3, padding=1)
    x = mx.array(_randn(1, 5, 20, 8))
    before = np.array(conv(x))
    conv.weight = conv.weight * 2  # what load_weights does: a new array object
    after = np.array(conv(x))
    np.testing.assert_allclose(after - np.array(conv.bias), 2 * (before - np.array(conv.bias)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups, blocks", [(1, 2.5), (3, 1.25), (2, 1)])
def test_weights_packed_in_blocks_give_the_kernels_own_blocked_copy_bit_for_bit(isa, groups, blocks):
    k = dispatch.kernels()
    o = int(blocks * k.WEIGHT_BLOCK)  # a narrower last block where blocks is fractional
    x, w = _randn(groups, 3, 40, 24), _randn(groups * 3, 3, 24, o)
    args = (None, None, False, None, 1, None, (0, 40), groups)

    def conv(weights, blocked):
        y = np.empty((groups, 3, 40, o), np.float32)
        k.conv2d_nhwc(x, weights, None, y, (1, 1), (3, 40), (0, 0), (1, 1), *args, blocked)
        return y

    own = conv(w, False)
    np.testing.assert_array_equal(conv(cpu_kernels._in_blocks(w, groups), True), own)
    if blocks > 1:  # the flag is read: plain (kh, kw, C, O) weights declared blocked are a different conv
        assert not np.array_equal(conv(w, True), own)


def test_mismatched_buffers_are_refused_with_the_shapes_named(isa):
    x, w = np.zeros((1, 4, 20, 8), np.float32), np.zeros((3, 3, 8, 16), np.float32)
    y = np.zeros((1, 4, 19, 16), np.float32)
    with pytest.raises(ValueError, match=r"x \(1, 4, 20, 8\).*do not fit"):
        dispatch.kernels().conv2d_nhwc(x, w, None, y, (1, 1), (4, 20), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        dispatch.kernels().conv2d_nhwc(x.astype(np.float64), w, None, y, (1, 1), (4, 19), (0, 0), (1, 1))


def test_layers_fall_back_to_their_mlx_paths_without_the_kernel(isa):
    conv = layers.Conv2d(16, 16, 3, padding=1)
    tconv = layers.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
    block = _block(16, 16)
    x = mx.array(_randn(1, 6, 20, 16))
    with_kernel = [np.array(conv(x)), np.array(tconv(x)), np.array(block(x))]
    with dispatch.use_kernels(False):
        assert dispatch.variant() is None and not dispatch.kernel_for(x)
        assert dispatch.conv2d(x, conv.weight.shape, (1, 1), True) != dispatch.KERNEL
        without = [np.array(conv(x)), np.array(tconv(x)), np.array(block(x))]
    for a, b in zip(with_kernel, without, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * np.abs(b).max())


# (C, O, k, dilation, length): the synthesizer's dilated resblock convs over rows tiled across cores (> 512
# frames), a row shorter than one vector block, and O not a multiple of the vector width.
CONV1D_CASES = [(32, 32, 11, 5, 1300), (64, 48, 3, 1, 7), (16, 16, 7, 3, 600), (8, 3, 5, 1, 40)]


@pytest.mark.parametrize("c_in,c_out,k,dilation,length", CONV1D_CASES)
def test_conv1d_kernel_matches_torch_float64(isa, c_in, c_out, k, dilation, length):
    x, w, b = _randn(2, c_in, length), _randn(c_out, c_in, k, scale=0.3), _randn(c_out)
    pad = dilation * (k - 1) // 2
    conv = layers.Conv1d(c_in, c_out, k, dilation=dilation, padding=pad)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    y = cpu_kernels.conv1d(conv, mx.array(x.transpose(0, 2, 1)), pad, dilation)
    args = dict(padding=pad, dilation=dilation)
    ref = F.conv1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **args)
    err, err_torch = _errors(np.array(y).transpose(0, 2, 1), ref,
                             F.conv1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **args))
    assert err <= 3 * err_torch + 2.4e-7, f"kernel error {err:.2e} vs torch float32 {err_torch:.2e}"
    np.testing.assert_array_equal(np.array(conv(mx.array(x.transpose(0, 2, 1)))), np.array(y))  # the layer uses it


# (C, O, k, stride, (before, after), length, frames): CREPE's conv1 (one channel, stride 4 folded into channels),
# its asymmetric 'same' padding with k 64, a layer of 4 outputs per frame (several frames per window of rows), and
# O not a multiple of the vector width (no BatchNorm then).
TAP_CASES = [(1, 32, 512, 4, (254, 254), 1024, 3), (16, 32, 64, 1, (31, 32), 40, 5), (64, 48, 64, 1, (31, 32), 4, 9),
             (8, 5, 16, 1, (0, 0), 70, 2)]


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,length,frames", TAP_CASES)
def test_tap_conv2d_kernel_with_relu_then_batchnorm_matches_torch_float64(isa, c_in, c_out, k, stride, pad, length,
                                                                          frames):
    x, w, b = _randn(frames, c_in, length, 1), _randn(c_out, c_in, k, 1, scale=0.3 / k ** 0.5), _randn(c_out)
    stats = dict(mean=_randn(c_out), var=np.abs(_randn(c_out)) + 0.5, weight=_randn(c_out), bias=_randn(c_out))
    conv = (layers.TapConv2d if stride == 1 else nn.Conv2d)(c_in, c_out, (k, 1), (stride, 1))
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 3, 1)), mx.array(b)
    bn = None
    if c_out % dispatch.lanes() == 0:
        bn = layers.BatchNorm(c_out)
        bn.running_mean, bn.running_var = mx.array(stats["mean"]), mx.array(stats["var"])
        bn.weight, bn.bias = mx.array(stats["weight"]), mx.array(stats["bias"])
        bn.eval()
    y = cpu_kernels.tap_conv2d(conv, mx.array(x.transpose(0, 2, 3, 1)), pad, bn=bn, relu_first=bn is not None)

    def ref(dtype):
        t = {k: torch.from_numpy(v).to(dtype) for k, v in stats.items()}
        xt = F.pad(torch.from_numpy(x).to(dtype), (0, 0, *pad))
        out = F.conv2d(xt, torch.from_numpy(w).to(dtype), torch.from_numpy(b).to(dtype), stride=(stride, 1))
        if bn is None:
            return out
        return F.batch_norm(F.relu(out), t["mean"], t["var"], t["weight"], t["bias"], False, 0.0, 1e-5)

    err, err_torch = _errors(np.array(y).transpose(0, 3, 1, 2), ref(torch.float64), ref(torch.float32))
    assert err <= 3 * err_torch + 2.4e-7, f"kernel error {err:.2e} vs torch float32 {err_torch:.2e}"


def test_pointwise_conv1d_runs_on_the_linear_kernel_and_matches_torch_float64(isa):
    x, w, b = _randn(2, 512, 37), _randn(64, 512, 1, scale=0.05), _randn(64)
    conv = layers.Conv1d(512, 64, 1)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    xm = mx.array(x.transpose(0, 2, 1))
    assert dispatch.conv1d(xm, conv.weight.shape, 1, 1, 1) == "kernel linear"
    y = conv(xm)
    ref = F.conv1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double())
    err, err_torch = _errors(np.array(y).transpose(0, 2, 1), ref,
                             F.conv1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)))
    assert err <= 3 * err_torch + 2.4e-7, f"kernel error {err:.2e} vs torch float32 {err_torch:.2e}"


# (C, groups, k, padding, length): HuBERT's positional conv (768 channels in 16 groups, k 128, half padding) at 10 s
# of audio, a tail under one register block, and several batches of a small one.
GROUPED_CASES = [(768, 16, 128, 64, 499, 1), (64, 4, 5, 2, 13, 3), (96, 2, 3, 0, 600, 2)]


@pytest.mark.parametrize("channels,groups,k,pad,length,batch", GROUPED_CASES)
def test_grouped_conv1d_kernel_matches_torch_float64(isa, channels, groups, k, pad, length, batch):
    x, w, b = _randn(batch, length, channels), _randn(channels, channels // groups, k, scale=0.1), _randn(channels)
    conv = layers.Conv1d(channels, channels, k, padding=pad, groups=groups)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    assert dispatch.conv1d(mx.array(x), conv.weight.shape, groups, 1, 1) == "kernel grouped"
    _assert_nlc_conv1d_matches_torch_float64(np.array(conv(mx.array(x))), x, w, b, padding=pad, groups=groups)


def _assert_nlc_conv1d_matches_torch_float64(y, x, w, b, **args):
    """y (an NLC conv1d of NLC x by torch-layout w, b) within 3x torch float32's error of torch float64.

    3x, as for conv2d: torch's float32 error depends on oneDNN's ISA. Its AVX-512 convs reduce in 16 lanes, with
    about a third of the error of its AVX2 convs, which sum like these kernels (grouped 96 channels, k 3: 1.7-2.0e-7
    against 5.2-6.1e-7 with ONEDNN_MAX_CPU_ISA=AVX2; the kernel 4-6.5e-7 on every variant)."""
    xt = torch.from_numpy(x).permute(0, 2, 1)
    ref = F.conv1d(xt.double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **args)
    err, err_torch = _errors(y.transpose(0, 2, 1), ref, F.conv1d(xt, torch.from_numpy(w), torch.from_numpy(b), **args))
    assert err <= 3 * err_torch + 2.4e-7, (err, err_torch)


# (C, k, padding, length): FCPE's conformer conv (k 31, "same"), a tail of frames under one register block, no
# padding, and a sequence longer than one work tile (256 frames).
DEPTHWISE_CASES = [(64, 31, 15, 100), (32, 5, 2, 13), (16, 3, 0, 40), (32, 7, 3, 700)]


@pytest.mark.parametrize("channels,k,pad,length", DEPTHWISE_CASES)
def test_depthwise_conv1d_kernel_matches_torch_float64(isa, channels, k, pad, length):
    x, w, b = _randn(2, length, channels), _randn(channels, 1, k, scale=0.3), _randn(channels)
    conv = layers.Conv1d(channels, channels, k, padding=pad, groups=channels)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    assert dispatch.kernel_for(mx.array(x), channels)
    _assert_nlc_conv1d_matches_torch_float64(np.array(conv(mx.array(x))), x, w, b, padding=pad, groups=channels)


@pytest.mark.parametrize("channels,k,pad,length", DEPTHWISE_CASES)
def test_fused_glu_depthwise_silu_matches_torch_float64_and_the_ops_in_turn(isa, channels, k, pad, length):
    x, w, b = _randn(1, length, 2 * channels), _randn(channels, 1, k, scale=0.3), _randn(channels)
    conv = layers.Conv1d(channels, channels, k, padding=pad, groups=channels)
    conv.weight, conv.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    fused = np.array(conv.glu_depthwise_silu(mx.array(x)))

    def ref(dtype):
        xt = torch.from_numpy(x).to(dtype).permute(0, 2, 1)
        y = F.conv1d(F.glu(xt, dim=1), torch.from_numpy(w).to(dtype), torch.from_numpy(b).to(dtype), padding=pad,
                     groups=channels)
        return F.silu(y)

    err, err_torch = _errors(fused.transpose(0, 2, 1), ref(torch.float64), ref(torch.float32))
    assert err <= 2 * err_torch + 4.8e-7, (err, err_torch)
    a, g = np.split(x, 2, axis=-1)  # the unfused MLX ops (fastmath's GLU and SiLU) agree to float32 rounding
    in_turn = np.array(fastmath.silu(nn.Conv1d.__call__(conv, mx.array(a) * fastmath.sigmoid(mx.array(g)))))
    np.testing.assert_allclose(fused, in_turn, rtol=0, atol=1e-6 * np.abs(in_turn).max())


def test_depthwise_kernel_refuses_mismatched_buffers_with_the_shapes_named(isa):
    x, w = np.zeros((1, 20, 32), np.float32), np.zeros((5, 16), np.float32)
    with pytest.raises(ValueError, match=r"x \(1, 20, 32\), w \(5, 16\).*do not fit"):
        dispatch.kernels().depthwise_conv1d(x, w, None, np.zeros((1, 20, 16), np.float32), 2, False, False)


# (C, O, k, stride, padding, output padding, length): the synthesizer's upsampling steps (40k: k 16 / stride 8;
# 48k: 24 / 12; 4 / 2), an output padding, phases no tap reaches (k 2 < stride 3), O not a multiple of the vector.
CONV_T1D_CASES = [(64, 32, 16, 8, 4, 0, 50), (32, 16, 24, 12, 6, 0, 20), (32, 16, 4, 2, 1, 0, 700),
                  (16, 16, 5, 3, 1, 1, 40), (16, 16, 2, 3, 0, 0, 30), (16, 8, 4, 2, 1, 0, 20)]


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,out_pad,length", CONV_T1D_CASES)
def test_conv_transpose1d_phases_match_torch_float64_and_fuse_leaky_relu_and_an_add(isa, c_in, c_out, k, stride, pad,
                                                                                    out_pad, length):
    x, w, b = _randn(2, c_in, length), _randn(c_in, c_out, k, scale=0.3), _randn(c_out)
    conv = layers.ConvTranspose1d(c_in, c_out, k, stride=stride, padding=pad, output_padding=out_pad)
    conv.weight, conv.bias = mx.array(w.transpose(1, 2, 0)), mx.array(b)
    xm = mx.array(x.transpose(0, 2, 1))
    y = np.array(conv(xm))
    args = dict(stride=stride, padding=pad, output_padding=out_pad)
    ref = F.conv_transpose1d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                             **args)
    err, err_torch = _errors(y.transpose(0, 2, 1), ref, F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w),
                                                                           torch.from_numpy(b), **args))
    assert err <= 3 * err_torch + 2.4e-7, (err, err_torch)
    residual = mx.array(_randn(*y.shape))
    fused = np.array(conv.leaky_add(xm, 0.1, residual))  # the kernel's prologue and epilogue when O fits vectors
    np.testing.assert_array_equal(fused, np.array(conv(mx.maximum(xm, xm * 0.1)) + residual))


def _numpy_conv_case(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 40, 64, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    return x, w


def _kernel_conv(x, w, kernels):
    y = np.empty((*x.shape[:3], w.shape[3]), np.float32)
    kernels.conv2d_nhwc(x, w, None, y, (1, 1), x.shape[1:3], (0, 0), (1, 1))
    return y


def test_kernel_calls_from_concurrent_threads_each_get_their_own_result(isa):
    import threading

    k = dispatch.kernels()  # (threads start with a fresh context: hand them the build)
    cases = [_numpy_conv_case(seed) for seed in range(4)]
    expected = [_kernel_conv(x, w, k) for x, w in cases]
    got = [[] for _ in cases]

    def run(i):  # the kernel releases the GIL: calls overlap, and one of them finds the worker pool busy
        for _ in range(20):
            got[i].append(_kernel_conv(*cases[i], k))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "kernel calls from concurrent threads did not finish"
    for outs, ref in zip(got, expected, strict=True):
        assert len(outs) == 20 and all(np.array_equal(o, ref) for o in outs)


def test_a_forked_child_runs_the_kernel_with_a_pool_of_its_own(isa):
    import os
    import signal

    x, w = _numpy_conv_case(7)
    k = dispatch.kernels()
    expected = _kernel_conv(x, w, k)  # the parent's pool threads exist now; a child has none of them
    pid = os.fork()
    if pid == 0:  # child: exit 0 only with the right result, killed by the alarm if it hangs on the parent's pool
        signal.alarm(30)
        os._exit(0 if np.array_equal(_kernel_conv(x, w, k), expected) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"forked child: wait status {status}"


# ------------------------------------------------------------------ elementwise kernels (csrc/elementwise.cpp)
# softmax, GELU and per-channel GroupNorm + GELU, over row lengths and element counts that leave partial vectors;
# their own generator keeps their inputs independent of the tests above
def _rng(*key) -> np.random.Generator:
    """Each test's own inputs, from its parameters: the same draws whichever tests a worker ran before it."""
    return np.random.default_rng([11, *(int(round(k * 10)) if isinstance(k, float) else int(k) for k in key)])


@pytest.mark.parametrize("rows,n", [(3, 1), (37, 7), (12, 50), (5, 517)])
def test_softmax_kernel_matches_torch_float64_copied_or_in_place(isa, rows, n):
    x = (_rng(rows, n).standard_normal((2, rows, n)) * 20).astype(np.float32)
    t = torch.from_numpy(x)
    ref = torch.softmax(t.double() * 0.125, dim=-1)
    got = cpu_kernels.softmax(mx.array(x), 0.125)
    err, err_torch = _errors(got, ref, torch.softmax(t * 0.125, dim=-1))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)
    scores = mx.array(x) * 1.0  # an array only this test holds
    same = cpu_kernels.softmax(scores, 0.125, in_place=True)
    assert same is scores and np.array_equal(np.asarray(same), np.asarray(got))


def test_softmax_copies_an_input_it_cannot_overwrite(isa):
    x = mx.array((_rng(6, 40).standard_normal((6, 40)) * 3).astype(np.float32))
    strided = x.T  # a transposed view: written over in place, it would corrupt x
    before = np.array(x)
    y = cpu_kernels.softmax(strided, 1.0, in_place=True)
    assert np.array_equal(np.array(x), before)
    np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 7, 1000, 70_003])
def test_gelu_kernel_matches_torch_float64(isa, n):
    x = np.concatenate([_rng(n).standard_normal(n) * 4,
                        [0.0, -0.0, 1e-30, -9.0, 9.0, 40.0, -40.0]]).astype(np.float32)
    t = torch.from_numpy(x)
    got = cpu_kernels.gelu(mx.array(x))
    err, err_torch = _errors(got, F.gelu(t.double()), F.gelu(t))
    assert err <= 2 * err_torch + 2.4e-7, (err, err_torch)
    assert np.asarray(got)[-5] == -0.0 or abs(np.asarray(got)[-5]) < 1e-18  # GELU(-9) rounds to (minus) zero


@pytest.mark.parametrize("channels,frames,offset", [(32, 1, 0.0), (48, 301, 3.0), (512, 1000, 50.0)])
def test_group_norm_gelu_kernel_matches_torch_float64_no_worse_than_the_ops_in_turn(isa, channels, frames, offset):
    cfg = HubertConfig(conv_dim=(channels,), conv_kernel=(3,), conv_stride=(1,))
    layer = GroupNormConvLayer(cfg, 0)
    rng = _rng(channels, frames, offset)
    gamma = rng.standard_normal(channels).astype(np.float32)
    beta = rng.standard_normal(channels).astype(np.float32)
    layer.layer_norm.weight, layer.layer_norm.bias = mx.array(gamma), mx.array(beta)
    # a large common offset: the per-channel mean must be taken before the squares (two passes)
    x = (rng.standard_normal((2, frames, channels)) * 2 + offset).astype(np.float32)
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


@pytest.mark.parametrize("channels,samples,offset", [(48, 10, 0.0), (64, 1603, 0.3), (512, 16_000, 2.0)])
def test_conv_group_norm_gelu_kernel_matches_torch_float64_without_storing_the_conv(isa, channels, samples, offset):
    # HuBERT's first layer (1 -> C channels, k 10, stride 5, no bias) in one kernel: one output frame; a waveform
    # with a DC offset (the per-channel means far from zero); a second of audio
    cfg = HubertConfig(conv_dim=(channels,), conv_kernel=(10,), conv_stride=(5,))
    layer = GroupNormConvLayer(cfg, 0)
    rng = _rng(channels, samples)
    w = (rng.standard_normal((channels, 1, 10)) * 0.3).astype(np.float32)
    gamma = rng.standard_normal(channels).astype(np.float32)
    beta = rng.standard_normal(channels).astype(np.float32)
    layer.conv.weight = mx.array(w.transpose(0, 2, 1))
    layer.layer_norm.weight, layer.layer_norm.bias = mx.array(gamma), mx.array(beta)
    x = (rng.standard_normal((2, samples)) + offset).astype(np.float32)
    with instrument.Seen() as seen:
        fused = np.array(layer(mx.array(x)[..., None]))
    assert seen.impls == {f"kernel conv1d+groupnorm+gelu {isa}"}  # the conv itself never ran
    with instrument.layers():
        ops = np.array(layer(mx.array(x)[..., None]))
    t = torch.from_numpy(x)[:, None]
    norm = torch.nn.GroupNorm(channels, channels, eps=cfg.group_norm_eps)
    norm.weight.data, norm.bias.data = torch.from_numpy(gamma), torch.from_numpy(beta)
    with torch.no_grad():
        ref = F.gelu(norm.double()(F.conv1d(t.double(), torch.from_numpy(w).double(), stride=5))).permute(0, 2, 1)
        t32 = F.gelu(norm.float()(F.conv1d(t, torch.from_numpy(w), stride=5))).permute(0, 2, 1)
    assert fused.shape == tuple(ref.shape) == ((2, (samples - 10) // 5 + 1, channels))
    err, err_torch = _errors(fused, ref, t32)
    err_ops, _ = _errors(ops, ref, t32)
    assert err <= 2 * err_torch + 2.4e-7 and err <= err_ops + 2.4e-7, (err, err_torch, err_ops)


def test_elementwise_kernels_run_only_where_dispatch_chooses_them(isa):
    x = mx.array(_rng(4, 64).standard_normal((4, 64)).astype(np.float32))
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
    with pytest.raises(ValueError, match="N >= K"):  # a waveform shorter than the kernel
        k.conv_group_norm_gelu(np.zeros((1, 9), np.float32), np.zeros((10, 16), np.float32), np.zeros(16, np.float32),
                               np.zeros(16, np.float32), np.zeros((1, 1, 16), np.float32), 5, 1e-5)
    with pytest.raises(ValueError, match="float32"):
        k.gelu(np.zeros(4, np.float64), np.zeros(4, np.float64))
