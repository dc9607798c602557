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


def test_released_harness_models_leave_the_process(parity):
    """Parity.release (the plugin calls it between test modules and components) drops every cached model, the
    pipeline's parts included, so nothing keeps them alive; they reload on demand."""
    import gc
    import weakref

    comp = parity.component("fcpe")
    weights = parity.weights(comp, comp.spec.cases[0].name)
    model = weakref.ref(comp.mlx(weights))
    pipe = parity.component("pipeline")
    pipe._parts[("test",)] = part = type("Part", (), {})()
    part = weakref.ref(part)
    parity.release()
    gc.collect()
    assert model() is None and part() is None
    assert comp.mlx(weights) is not None  # reloaded


def test_the_plugin_releases_models_at_a_module_boundary_only_above_its_memory_bound(monkeypatch):
    from types import SimpleNamespace

    from rvc_mlx.testing import plugin

    released = []
    config = SimpleNamespace(_rvc_parity=SimpleNamespace(release=lambda: released.append(True)))

    def item(module):
        return SimpleNamespace(module=module, config=config, fspath=f"tests/{module}.py")

    a, a2, b = item("test_a"), item("test_a"), item("test_b")
    a2.module = a.module
    for resident, pair, want in [(4 << 30, (a, a2), False),  # same module: the models stay
                                 (1 << 30, (a, b), False),  # another module, but the process is small
                                 (4 << 30, (a, b), True),
                                 (None, (b, None), True)]:  # unreadable (not Linux): always
        released.clear()
        monkeypatch.setattr(plugin, "_resident_bytes", lambda r=resident: r)
        plugin.pytest_runtest_teardown(*pair)
        assert bool(released) == want, (resident, want)
    config.workerinput = {"workercount": 2}  # an xdist worker: its share of the bound
    for resident, want in [(1 << 30, False), (2 << 30, True)]:
        released.clear()
        monkeypatch.setattr(plugin, "_resident_bytes", lambda r=resident: r)
        plugin.pytest_runtest_teardown(a, b)
        assert bool(released) == want, (resident, want)
