"""MLX's buffer cache on the CPU: the Linux wheel keeps at most 32 MiB of freed buffers for reuse.

Every array larger than that is a fresh allocation whose pages fault in on first touch: an add over a 50 MB
array then takes several times its cached time, and the synthesizer runs markedly slower. `configure_cache` raises the
limit (never lowers it) to `RVC_MLX_CACHE_LIMIT` bytes, default min(2 GiB, an eighth of physical memory).
"""

from __future__ import annotations

import os

DEFAULT_CAP = 2 << 30


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def target_cache_limit() -> int:
    """Bytes of freed buffers MLX may keep: $RVC_MLX_CACHE_LIMIT, else min(2 GiB, physical memory / 8)."""
    env = os.environ.get("RVC_MLX_CACHE_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ValueError(f"RVC_MLX_CACHE_LIMIT={env!r}: expected a number of bytes, e.g. 2e9") from None
    mem = _physical_memory()
    return DEFAULT_CAP if mem is None else min(DEFAULT_CAP, mem // 8)


def configure_cache() -> int:
    """Raise MLX's buffer-cache limit to `target_cache_limit()` if it is lower; returns the limit in force."""
    from rvc_mlx.runtime import mx

    target = target_cache_limit()
    previous = mx.set_cache_limit(target)
    if previous > target:  # a larger limit (macOS: the memory limit) or one the user set: keep it
        mx.set_cache_limit(previous)
        return previous
    return target
