"""What decides float32 results on this machine, for the report and the golden manifest.

Two runs of unchanged code differ in their last bits when any of these differ: the CPU and its vector ISA, the
kernel build in use, the BLAS library and its core type, MLX's version and device, thread counts, and the
environment variables that steer them. `differences` names the fields in which two records disagree.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

# environment variables that change which code runs or how many threads split a reduction (ATEN_ / ONEDNN_ / DNNL_:
# torch's vector ISA, which sets the twins' float32 rounding and speed)
VARIABLES = re.compile(r"^(RVC_MLX_|OPENBLAS_|GOTO|OMP_|MKL_|MLX_|VECLIB_|ACCELERATE_|ATEN_|ONEDNN_|DNNL_)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """This process's record: CPU, ISA features, kernel build, BLAS, MLX, threads, steering variables."""
    from rvc_mlx import _blas, dispatch

    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "vector_isa": sorted(dispatch.cpu_features()),
        "kernels": dispatch.variant() or "none",
        "execution": dispatch.execution(),
        "blas": _blas.status(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "variables": {k: v for k, v in sorted(os.environ.items()) if VARIABLES.match(k)},
    }
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        out["mlx"] = getattr(mx, "__version__", "?")
        out["mlx_device"] = str(mx.default_device())
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields in which two environment records differ, each as `field: a -> b`."""
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key, 'absent')} -> {b.get(key, 'absent')}")
    return out
