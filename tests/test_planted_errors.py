"""Planted errors fail golden parity and the failure says where.

A 1e-5 relative error planted in a kernel call that only the shipped path makes (a fused epilogue or prologue)
fails that component's golden parity check: the first line names the shipped block that diverges, the second
where in it (worst element), the third says the layer-by-layer run passes and names the fused implementation
inside that block. A 1% error planted in one RMVPE layer fails a parity test whose report opens with the blame
line and the worst element with both values, without pytest's `where False = ...`."""

import numpy as np
import pytest

from rvc_common import instrument
from rvc_mlx import cpu_kernels, dispatch

needs_kernels = pytest.mark.skipif(dispatch.variant() is None, reason=f"no kernel build here: {dispatch.status()}")

# plant name -> (cpu_kernels function, "is this call fused?" from its keyword arguments)
PLANTS = {
    "conv2d+bn": ("conv2d", lambda kw: kw.get("bn") is not None),
    "conv_transpose2d+bn": ("conv_transpose2d", lambda kw: kw.get("bn") is not None),
    "depthwise+glu+silu": ("depthwise_conv1d", lambda kw: kw.get("glu", False)),
    "conv1d+leaky+add": ("leaky_conv1d", lambda kw: kw.get("residual") is not None),
    "conv_transpose1d+leaky+add": ("conv_transpose2d", lambda kw: kw.get("slope") is not None),
}


@pytest.fixture
def plant(monkeypatch):
    """plant(name): scale the output of the fused kernel calls `name` picks by 1 + 1e-5; returns the call counts
    (shipped, layer-by-layer)."""

    def install(name):
        fn_name, fused = PLANTS[name]
        original = getattr(cpu_kernels, fn_name)
        calls = {"shipped": 0, "layer-by-layer": 0}
        params = original.__code__.co_varnames[:original.__code__.co_argcount]

        def planted(*args, **kwargs):
            out = original(*args, **kwargs)
            if not fused({**dict(zip(params, args, strict=False)), **kwargs}):
                return out
            calls["layer-by-layer" if instrument.layer_by_layer() else "shipped"] += 1
            return out * np.float32(1 + 1e-5)

        monkeypatch.setattr(cpu_kernels, fn_name, planted)
        return calls

    return install


CASES = [  # (plant, component, case, first divergent shipped tap, the block the fused path diverges inside, label)
    ("conv2d+bn", "rmvpe", "speech", "unet.encoder.layers.0.conv.0.conv.2",
     "unet.encoder.layers.0.conv.0 (ConvBlockRes", "conv2d+bn+relu"),
    ("conv_transpose2d+bn", "rmvpe", "speech", "unet.decoder.layers.0.conv1.2",
     "unet.decoder.layers.0 (ResDecoderBlock", "conv_transpose2d+bn+relu"),
    ("depthwise+glu+silu", "fcpe", "speech-taps", "net.encoder_layers.0.conformer.net.6",
     "net.encoder_layers.0.conformer (ConformerConvModule", "depthwise1d+glu+silu"),
    ("conv1d+leaky+add", "synth", "v2-40k-nof0", "synth.stage0", "synth.stage0 (tap", "conv1d+leaky+add"),
    ("conv_transpose1d+leaky+add", "synth", "v2-48k-f0", "synth.upsampled0", "synth.upsampled0 (tap",
     "conv_transpose1d+leaky+add"),
]


@needs_kernels
@pytest.mark.parity
@pytest.mark.parametrize("name, component, case, first, block, label", CASES, ids=[c[0] for c in CASES])
def test_error_planted_in_a_shipped_only_kernel_call_fails_parity_and_names_the_fused_block(
        parity, plant, name, component, case, first, block, label):
    calls = plant(name)
    result = parity.check(component, case, record=False)
    assert calls["shipped"] > 0 and calls["layer-by-layer"] == 0, calls  # a call only the shipped path makes
    assert not result.passed and result.layers.passed, result.failure_message()
    line1, where, line2 = result.failure_message().splitlines()[:3]
    assert where.startswith("  worst element at index ("), where
    isa, execution = dispatch.variant(), dispatch.execution()
    assert f"(golden; shipped path, {execution}): first divergence at {first} (" in line1, line1
    assert line2.startswith(f"layer-by-layer ({execution}): all ") and \
        f"taps pass: the fused path diverges inside {block}" in line2 and f"kernel {label} {isa}" in line2, line2


PLANTED_TEST = """
from rvc_mlx import rmvpe
from rvc_mlx.testing.asserts import assert_matches


def test_planted(parity, monkeypatch):
    original = rmvpe.Intermediate.__call__
    monkeypatch.setattr(rmvpe.Intermediate, "__call__", lambda self, x: original(self, x) * 1.01)
    assert_matches(parity.check("rmvpe", "speech", record=False))
"""


@pytest.mark.parity
def test_a_planted_error_fails_with_the_blame_line_then_the_worst_element_and_no_pytest_rewrite(pytester):
    pytester.makepyfile(PLANTED_TEST)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "-p", "no:cacheprovider", "-p", "no:benchmark")
    res.assert_outcomes(failed=1)
    out = res.stdout.lines
    head = next(i for i, line in enumerate(out) if "test_planted" in line and line.startswith("_"))
    blame, where = [line for line in out[head + 1:] if line.strip()][:2]
    assert blame.startswith("rmvpe/speech (golden; shipped path") and \
        "first divergence at unet.intermediate (Intermediate)" in blame, blame
    assert where.startswith("  worst element at index (") and ": MLX " in where and ", reference " in where, where
    assert "over the max_rel limit" in where, where
    assert not any("where False" in line or "AssertionError" in line for line in out), "\n".join(out)
