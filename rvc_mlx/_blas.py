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

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
INSTALL_HINT = "apt-get install libopenblas0-pthread (make test/parity do this when run as root)"

_state: dict[str, str | None] = {"path": None, "reason": None}


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
        _state["reason"] = "mlx.core was imported before rvc_mlx; import rvc_mlx first"
        return None
    found = ctypes.util.find_library("openblas")
    paths = [choice] if choice else [p for p in CANDIDATES if os.path.exists(p)] + ([found] if found else [])
    for path in paths:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _state["path"] = path
        return path
    _state["reason"] = f"no OpenBLAS found ({INSTALL_HINT})"
    return None


def status() -> str:
    """One line: which BLAS MLX's matmuls use."""
    if _state["path"]:
        return f"OpenBLAS ({_state['path']})"
    return f"MLX's bundled BLAS: {_state['reason'] or 'not checked'}"


def warn_if_slow() -> None:
    if sys.platform.startswith("linux") and not _state["path"]:
        warnings.warn(f"rvc-mlx: MLX uses its bundled reference BLAS (slow, less accurate): {_state['reason']}",
                      RuntimeWarning, stacklevel=2)
