"""MLX as rvc-mlx runs it, set up at first use.

Every rvc_mlx module that computes imports `mx` and `nn` from here, so the first of them loads OpenBLAS before
mlx.core (MLX's Linux wheel would otherwise use the netlib reference BLAS) and sizes MLX's buffer cache;
`rvc_mlx.cpu_kernels` says at its import when the C++ kernels are missing. Importing `rvc_mlx`, `rvc_common`
or the PyTorch twins changes nothing in the process; `setup()` is the explicit call, and does its work once.
"""

from __future__ import annotations

from rvc_mlx._blas import load_fast_blas, warn_if_slow

load_fast_blas()  # before mlx.core is loaded: its symbols then resolve to OpenBLAS

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from rvc_mlx._memory import configure_cache  # noqa: E402

__all__ = ["mx", "nn", "setup"]

_ready = False


def setup() -> None:
    """Warn if the BLAS is slow and raise MLX's cache limit; once per process."""
    global _ready
    if _ready:
        return
    _ready = True
    warn_if_slow()
    configure_cache()


setup()
