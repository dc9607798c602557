"""The fast-BLAS loader: OpenBLAS with its best kernels when available, and a one-line warning otherwise."""

import os
import subprocess
import sys

import pytest

from rvc_mlx import _blas


def _import_rvc_mlx(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MLX uses Accelerate / Metal off Linux")
def test_mlx_uses_openblas_with_the_cpus_kernels_in_this_environment():
    assert _blas._state["path"], f"no fast BLAS: {_blas.status()}; run `make test` as root (installs OpenBLAS)"
    want = os.environ.get("OPENBLAS_CORETYPE") or _blas.cpu_coretype()  # a user's choice (Haswell on AVX-512) holds
    if want:
        assert (_blas._state["core"] or "").lower() == want.lower(), _blas.status()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MLX uses Accelerate / Metal off Linux")
def test_importing_mlx_before_rvc_mlx_warns_in_one_line():
    r = _import_rvc_mlx("import mlx.core, rvc_mlx.runtime")
    lines = [ln for ln in r.stderr.splitlines() if "RuntimeWarning" in ln]
    assert r.returncode == 0 and len(lines) == 1, r.stderr
    assert "reference BLAS" in lines[0] and "import an rvc_mlx model (or rvc_mlx.runtime) first" in lines[0]


def test_a_chosen_blas_that_is_not_openblas_is_not_reported_as_openblas(monkeypatch):
    # RVC_MLX_BLAS=/path/libmkl_rt.so.3 loads (MLX's cblas_sgemm resolves to MKL); the report must not call it
    # OpenBLAS with unknown kernels
    monkeypatch.setitem(_blas._state, "path", "/opt/mkl/lib/libmkl_rt.so.3")
    monkeypatch.setitem(_blas._state, "core", None)
    line = _blas.status()
    assert "/opt/mkl/lib/libmkl_rt.so.3" in line and "OpenBLAS (" not in line and "not OpenBLAS" in line
    monkeypatch.setitem(_blas._state, "core", "SkylakeX")
    assert _blas.status() == "OpenBLAS (/opt/mkl/lib/libmkl_rt.so.3, SkylakeX kernels)"


def test_importing_rvc_mlx_or_its_config_loads_neither_mlx_nor_a_blas():
    r = _import_rvc_mlx("import sys, ctypes, rvc_mlx, rvc_common.config, rvc_common.instrument\n"
                        "maps = open('/proc/self/maps').read() if sys.platform.startswith('linux') else ''\n"
                        "print('mlx' in sys.modules or 'mlx.core' in sys.modules, 'openblas' in maps)")
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], (r.stdout, r.stderr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MLX uses Accelerate / Metal off Linux")
def test_disabling_openblas_warns_and_a_clean_import_does_not():
    r = _import_rvc_mlx("import rvc_mlx.runtime", {"RVC_MLX_BLAS": "none"})
    assert "RVC_MLX_BLAS=none" in r.stderr
    clean = _import_rvc_mlx("import rvc_mlx.runtime")
    assert clean.returncode == 0 and "RuntimeWarning" not in clean.stderr, clean.stderr


@pytest.mark.skipif(_blas.cpu_coretype() is None, reason="needs an AVX2/AVX-512 x86 CPU")
def test_openblas_forced_onto_sse_kernels_warns():
    r = _import_rvc_mlx("import rvc_mlx.runtime", {"OPENBLAS_CORETYPE": "Prescott"})
    assert "Prescott kernels" in r.stderr, r.stderr


GEMM = ("import hashlib, torch\ntorch.manual_seed(0)\na, b = torch.randn(257, 301, dtype=torch.float64), "
        "torch.randn(301, 263, dtype=torch.float64)\nprint(hashlib.md5((a @ b).numpy().tobytes()).hexdigest())")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MLX uses Accelerate / Metal off Linux")
def test_the_twins_compute_with_torchs_own_blas_while_mlx_gets_openblas():
    alone = _import_rvc_mlx(GEMM, {"OMP_NUM_THREADS": "1"})
    harness = _import_rvc_mlx("import rvc_mlx.testing.harness\nfrom rvc_mlx import _blas\nprint(_blas._state['path'])\n"
                              + GEMM, {"OMP_NUM_THREADS": "1"})
    assert alone.returncode == 0 and harness.returncode == 0, harness.stderr
    blas, digest = harness.stdout.split()[-2:]
    assert "openblas" in blas.lower() and digest == alone.stdout.split()[-1]
