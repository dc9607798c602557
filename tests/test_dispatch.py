"""One place chooses each op's implementation, and it can be told: RVC_MLX_KERNELS=0 runs the pure-MLX path (no
kernel is called), RVC_MLX_ISA picks a kernel build (one this CPU cannot run is refused in one line, never loaded),
--mlx-device gpu fails in one line where MLX has no GPU; the chunk sizes default to the shipped constants."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import pytest

from rvc_mlx import dispatch

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=600)


NO_KERNEL_CALLS = """
    import importlib, json
    from rvc_mlx import dispatch
    calls = []
    for isa in dispatch.built():  # count every call into any kernel build, whichever the code would pick
        module = importlib.import_module(f"rvc_mlx._kernels_{isa}")
        for name in ("conv2d_nhwc", "depthwise_conv1d", "gru_scan"):
            def counted(*a, __f=getattr(module, name), __n=f"{isa}.{name}", **k):
                calls.append(__n)
                return __f(*a, **k)
            setattr(module, name, counted)
    from rvc_mlx.testing.harness import Parity
    harness = Parity()
    results = [harness.check(c, case) for c, case in CASES]
    print(json.dumps({"variant": dispatch.variant(), "execution": dispatch.execution(), "calls": calls,
                      "failed": [r.failure_message() for r in results if not r.passed],
                      "implementations": sorted({i for r in results for t in r.taps for i in t.impl})}))
"""


@pytest.mark.skipif(not dispatch.built(), reason="no kernel build here: nothing to keep from running")
def test_with_RVC_MLX_KERNELS_0_golden_cases_pass_and_no_kernel_is_called():
    cases = [("rmvpe", "harmonic"), ("fcpe", "speech-taps"), ("synth", "v2-32k-nof0")]
    proc = _python(f"CASES = {cases!r}\n{textwrap.dedent(NO_KERNEL_CALLS)}", RVC_MLX_KERNELS="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["variant"] is None and out["execution"] in ("no kernels, fastmath", "pure MLX")
    assert out["calls"] == [] and not out["failed"], out
    assert not [i for i in out["implementations"] if i.startswith("kernel")]
    assert {"mlx compiled +bn+relu", "gemm conv1d shifted", "gemm conv_transpose1d overlap-add"} <= set(
        out["implementations"]), out["implementations"]
    # and the same script with the kernels (where built) does call them: the counting is real
    proc = _python(f"CASES = {cases[:2]!r}\n{textwrap.dedent(NO_KERNEL_CALLS)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["calls"] and not out["failed"], out


@pytest.mark.parametrize("variable, value, message", [
    ("RVC_MLX_KERNELS", "maybe", "RVC_MLX_KERNELS='maybe': use 1 (kernels where built) or 0 (no kernels)"),
    ("RVC_MLX_ISA", "sse9", "RVC_MLX_ISA='sse9': choose one of avx512, avx2, generic"),
    ("RVC_MLX_MATH", "libm", "RVC_MLX_MATH='libm': choose one of mlx, fastmath")])
def test_a_bad_setting_is_refused_in_one_line_at_first_use_and_by_the_cli(variable, value, message):
    proc = _python("import rvc_mlx; print('imported')\nfrom rvc_mlx import layers; import mlx.core as mx\n"
                   "layers.Conv2d(4, 4, 3)(mx.ones((1, 8, 8, 4)))", **{variable: value})
    assert proc.stdout.strip() == "imported" and proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"rvc_mlx.dispatch.KernelError: {message}"
    proc = _python("from rvc_mlx.cli import main; raise SystemExit(main(['info', 'missing.pth']))", **{variable: value})
    assert proc.returncode == 2 and proc.stderr.strip() == f"rvc-mlx: {message}", proc.stderr


@pytest.mark.parametrize("build", dispatch.VARIANTS)
def test_RVC_MLX_ISA_forces_a_build_this_cpu_runs_and_refuses_one_it_cannot_without_loading_it(build):
    code = """
        import mlx.core as mx
        from rvc_mlx import dispatch, layers
        conv = layers.Conv2d(16, 16, 3, padding=1)
        print(dispatch.variant(), float(mx.sum(conv(mx.ones((1, 8, 20, 16))))))
    """
    proc = _python(code, RVC_MLX_ISA=build)
    if build in dispatch.runnable():
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[0] == build
    elif build in dispatch.built():  # e.g. avx512 on an AVX2-only CPU: an error, not SIGILL
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
        assert f"this CPU cannot run the {build} kernels" in proc.stderr.strip().splitlines()[-1]
    else:
        assert proc.returncode == 1 and "not installed" in proc.stderr.strip().splitlines()[-1]


def test_chunk_sizes_default_to_the_shipped_constants_and_use_chunks_restores_them():
    assert dispatch.settings().attention_rows is None and dispatch.settings().resblock_frames is None
    assert dispatch.attention_rows(1, 12, 1000) == max((64 << 20) // (4 * 12 * 1000), 256)
    assert dispatch.resblock_frames(1, 32, 60) == (4 << 20) // (4 * 32)
    with dispatch.use_chunks(attention_rows=3, resblock_frames=7):
        assert dispatch.attention_rows(1, 12, 1000) == 3 and dispatch.resblock_frames(1, 32, 60) == 7
    assert dispatch.attention_rows(1, 12, 1000) == max((64 << 20) // (4 * 12 * 1000), 256)
    with pytest.raises(ValueError, match="attention_rows must be a positive integer"):
        dispatch.use_chunks(attention_rows=0)


@pytest.mark.skipif(mx.is_available(mx.gpu), reason="this MLX has a GPU: --mlx-device gpu runs on it")
def test_mlx_device_gpu_without_a_gpu_fails_in_one_line(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--mlx-device", "gpu", "-p", "rvc_mlx.testing.plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any(line.startswith("ERROR: no MLX GPU here") for line in result.errlines), result.errlines
    from rvc_mlx.cli import main

    assert main(["--mlx-device", "gpu", "info", "model.pth"]) == 2


def test_the_pytest_header_names_the_kernel_build_and_the_blas(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin")
    assert any(line.startswith(f"rvc-mlx: {dispatch.status()}") for line in result.outlines), result.outlines
    assert any(line.startswith("rvc-mlx: MLX matmuls use") for line in result.outlines)


def test_the_path_table_gives_every_op_a_reason_per_path_a_fallback_and_a_layer_method_per_path():
    from types import SimpleNamespace

    from rvc_mlx import layers

    for op, paths in dispatch.TABLE.items():
        assert all(p.why.strip() and p.name.split()[0] in (dispatch.KERNEL, dispatch.GEMM, dispatch.MLX)
                   for p in paths), op
        assert paths[-1].when(SimpleNamespace()), f"{op}: the last path must always hold (the fallback)"
    for layer, op in ((layers.Conv2d, "conv2d"), (layers.Conv1d, "conv1d")):
        assert {p.name for p in dispatch.TABLE[op]} == set(layer.PATHS), op
        assert all(callable(getattr(layer, method)) for method in layer.PATHS.values()), op
