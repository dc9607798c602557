"""MLX's buffer cache is raised from the Linux wheel's 32 MiB (large arrays would page-fault on every op)."""

import mlx.core as mx
import pytest

from rvc_mlx import _memory


def test_import_raises_mlx_cache_limit_to_the_target():
    previous = mx.set_cache_limit(0)
    mx.set_cache_limit(previous)
    assert previous >= _memory.target_cache_limit() >= 256 << 20


def test_cache_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RVC_MLX_CACHE_LIMIT", "1.5e9")
    assert _memory.target_cache_limit() == 1_500_000_000
    monkeypatch.setenv("RVC_MLX_CACHE_LIMIT", "lots")
    with pytest.raises(ValueError, match="RVC_MLX_CACHE_LIMIT='lots'"):
        _memory.target_cache_limit()


def test_configure_cache_never_lowers_a_larger_limit(monkeypatch):
    previous = mx.set_cache_limit(8 << 30)
    try:
        monkeypatch.setenv("RVC_MLX_CACHE_LIMIT", str(1 << 30))
        assert _memory.configure_cache() == 8 << 30
        assert mx.set_cache_limit(8 << 30) == 8 << 30
    finally:
        mx.set_cache_limit(previous)
