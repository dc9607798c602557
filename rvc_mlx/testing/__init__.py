"""The parity harness: taps, metrics, golden store, tolerance policy, first-divergence blame, reports.

It imports torch before anything loads MLX's runtime: torch then keeps its own BLAS (MKL on x86) for the twins
while MLX still gets OpenBLAS. The other way round, torch's GEMMs resolve to the OpenBLAS that rvc_mlx.runtime
loads globally, and the float64 oracle would be computed by the library of the port it judges.
"""

import sys

# torch loaded before rvc_mlx.runtime (now, or earlier by the caller): the twins compute with torch's own BLAS
TWINS_OWN_BLAS = "torch" in sys.modules or "rvc_mlx.runtime" not in sys.modules
try:
    import torch  # noqa: F401
except ImportError:  # the numpy-only parts (the golden format, `rvc-mlx check` of a foreign dump) need no torch
    TWINS_OWN_BLAS = False


def twins_blas() -> str:
    """Which BLAS the PyTorch twins' GEMMs use, for the pytest header."""
    if "torch" not in sys.modules:
        return "torch is not installed (no twins)"
    info = next((p.split("=", 1)[1] for p in sys.modules["torch"].__config__.show().replace(",", "\n").split()
                 if p.startswith("BLAS_INFO=")), "unknown")
    if TWINS_OWN_BLAS:
        return f"torch's own BLAS ({info}), independent of MLX's"
    return ("MLX's OpenBLAS (rvc_mlx.runtime was imported before torch and rvc_mlx.testing): the oracle shares the "
            "port's GEMMs")
