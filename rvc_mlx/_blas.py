"""Load a fast BLAS for MLX on Linux before MLX is imported.

The `mlx[cpu]` Linux wheel links the netlib reference BLAS: matmuls are ~15x slower than OpenBLAS and their
float32 dot products accumulate sequentially (about 3x the rounding error of a blocked BLAS). Loading OpenBLAS
with RTLD_GLOBAL before MLX's first matmul makes MLX's `cblas_sgemm` resolve to it. In the same process
PyTorch's BLAS calls resolve to it as well, so both frameworks share one GEMM. Set RVC_MLX_BLAS=/path/lib.so
to choose the library, or RVC_MLX_BLAS=none to keep MLX's bundled one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings
from typing import Any

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
# OpenBLAS's idle workers spin on sched_yield for 2^28 cycles after each GEMM, and on 2 cores that takes one from
# the threads of the next ops (RMVPE's conv kernel ran at half speed after a GEMM). 2^18 cycles still bridge
# back-to-back GEMMs (the synthesizer's speed is unchanged).
THREAD_TIMEOUT = "18"
INSTALL_HINT = "apt-get install libopenblas0-pthread (make test/parity do this when run as root)"

_state: dict[str, Any] = {"path": None, "reason": None, "core": None, "lib": None, "sgemm": None}


def load_fast_blas() -> str | None:
    """Load OpenBLAS globally (Linux only, once); returns its path, or None with the reason kept for `status`."""
    if _state["path"] or _state["reason"]:
        return _state["path"]
    if not sys.platform.startswith("linux"):
        _state["reason"] = "not Linux (MLX uses Accelerate / Metal)"
        return None
    choice = os.environ.get("RVC_MLX_BLAS", "")
    if choice.lower() == "none":
        _state["reason"] = "disabled by RVC_MLX_BLAS=none"
        return None
    if "mlx.core" in sys.modules:
        _state["reason"] = ("mlx.core was imported before rvc_mlx.runtime; import an rvc_mlx model (or "
                            "rvc_mlx.runtime) first")
        return None
    found = ctypes.util.find_library("openblas")
    paths = [choice] if choice else [p for p in CANDIDATES if os.path.exists(p)] + ([found] if found else [])
    # read by OpenBLAS's constructor during dlopen only, and restored right after
    settings = {"OPENBLAS_CORETYPE": cpu_coretype(), "OPENBLAS_THREAD_TIMEOUT": THREAD_TIMEOUT}
    settings = {k: v for k, v in settings.items() if v and k not in os.environ}
    for path in paths:
        os.environ.update(settings)
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        finally:
            for k in settings:
                del os.environ[k]
        _state["path"] = path
        _state["core"] = _corename(lib)
        _state["lib"] = lib
        return path
    _state["reason"] = f"no OpenBLAS found ({INSTALL_HINT})"
    return None


def cpu_coretype() -> str | None:
    """The OpenBLAS kernel family this x86 CPU supports, from /proc/cpuinfo (None elsewhere).

    Debian's OpenBLAS 0.3.21 does not know recent Xeons and falls back to its SSE3 'Prescott' kernels (~65 vs
    ~300 GFLOP/s on 2 cores here); naming the family explicitly picks the AVX-512 / AVX2 kernels."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


def _corename(lib) -> str | None:
    try:
        fn = lib.openblas_get_corename
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def cblas_sgemm() -> Any:
    """The loaded OpenBLAS's `cblas_sgemm` (the GEMM MLX's matmuls call) as a ctypes function, or None where MLX
    uses another BLAS (macOS, RVC_MLX_BLAS=none, none found)."""
    lib = _state["lib"]
    if lib is None:
        return None
    fn = _state["sgemm"]
    if fn is None:
        try:
            fn = lib.cblas_sgemm
        except AttributeError:  # a library named by RVC_MLX_BLAS without the C interface
            return None
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        fn.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]  # order, transA, transB, M, N, K, alpha, A, lda ...
        fn.restype = None
        _state["sgemm"] = fn
    return fn


SLOW_CORES = {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "generic"}


def status() -> str:
    """One line: which BLAS MLX's matmuls use."""
    if _state["path"] and _state.get("core"):
        return f"OpenBLAS ({_state['path']}, {_state['core']} kernels)"
    if _state["path"]:  # RVC_MLX_BLAS named a library without OpenBLAS's corename (e.g. MKL's libmkl_rt)
        return f"{_state['path']} (RVC_MLX_BLAS; not OpenBLAS: its kernels are not known)"
    return f"MLX's bundled BLAS: {_state['reason'] or 'not checked'}"


def warn_if_slow() -> None:
    """One-line RuntimeWarning when MLX's matmuls run on a slow BLAS (bundled netlib, or OpenBLAS's SSE kernels)."""
    if not sys.platform.startswith("linux"):
        return
    if not _state["path"]:
        warnings.warn(f"rvc-mlx: MLX uses its bundled reference BLAS (~10x slower, less accurate): {_state['reason']}",
                      RuntimeWarning, stacklevel=3)
    elif (_state.get("core") or "").lower() in SLOW_CORES and cpu_coretype():
        warnings.warn(f"rvc-mlx: OpenBLAS runs its {_state['core']} kernels on a CPU with {cpu_coretype()} "
                      f"support (~4x slower); unset OPENBLAS_CORETYPE or set it to {cpu_coretype()}",
                      RuntimeWarning, stacklevel=3)
