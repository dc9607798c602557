"""rvc-mlx: RVC voice-conversion inference on MLX with layer-by-layer parity against PyTorch twins."""

import importlib.util

from rvc_mlx._blas import load_fast_blas, warn_if_slow
from rvc_mlx._memory import configure_cache

__version__ = "0.1.0"


def _mlx_installed() -> bool:
    try:
        return importlib.util.find_spec("mlx.core") is not None
    except (ImportError, ValueError):
        return False


# Without MLX only the numpy parts work (`rvc-mlx check`, the golden format): nothing to set up for it.
if _mlx_installed():
    # Before any `import mlx.core`: MLX's Linux wheel would otherwise use the netlib reference BLAS.
    load_fast_blas()
    warn_if_slow()
    configure_cache()  # after the BLAS: it imports mlx.core

    from rvc_mlx.cpu_kernels import warn_if_missing  # noqa: E402  (imports mlx.core: after the BLAS)

    warn_if_missing()
