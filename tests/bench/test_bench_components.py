"""Component speed: MLX vs the PyTorch twin on the same input in the same run (ratios, RTF, peak memory, op-class
breakdown in reports/bench.json and parity.html). `make test` runs the 1 s entries once, untimed, as a smoke test."""

import numpy as np
import pytest
import torch

from rvc_mlx.testing import bench
from rvc_mlx.testing.profile import profile_mlx, profile_torch

SECONDS = [pytest.param(1, id="1s"), pytest.param(10, id="10s", marks=pytest.mark.slow),
           pytest.param(60, id="60s", marks=(pytest.mark.slow, pytest.mark.long_bench))]
# component -> (harness component, packaged weights or None, method returning a numpy array)
MODELS = {"hubert": ("hubert", None, "features"), "rmvpe": ("rmvpe", None, "f0"),
          "crepe-full": ("crepe", "crepe-full", "f0"), "crepe-tiny": ("crepe", "crepe-tiny", "f0"),
          "fcpe": ("fcpe", None, "f0")}


@pytest.fixture(scope="module")
def loaded():
    """The predictors this module benchmarks, loaded once each and freed with the module."""
    return {}


def _predictor(parity, _loaded: dict, name: str, impl: str):
    if (name, impl) not in _loaded:
        comp_name, package, _ = MODELS[name]
        comp = parity.component(comp_name)
        if package is None:
            w = comp.weights(None)
            _loaded[name, impl] = comp.mlx(w) if impl == "mlx" else comp.twin(w, torch.float32)
        else:
            from rvc_mlx.testing.packages import asset

            cls = comp.mlx_class() if impl == "mlx" else comp.twin_class()
            kw = {} if impl == "mlx" else {"dtype": torch.float32}
            _loaded[name, impl] = cls.from_checkpoint(asset(package), **kw)
    return _loaded[name, impl]


# torch's CREPE (full ~35 s, tiny ~25 s on 1 s of audio on 2 cores, profile included): as `make test` smoke tests
# they would only re-check the twin that tests/test_crepe.py checks against torchcrepe; `make bench` and
# `make parity` run them
# Full CREPE has no 60 s entry: its 1024-sample windows are independent, so its cost is linear in frames by
# construction (the 10 s entry gives the ratio), and the 60 s pair alone took ten minutes of `make parity`. For the
# same reason `make parity`'s spot check times it at 1 s only (its 10 s pair, MLX warm-up included, took 2.2 of the
# spot check's 7.3 minutes; 1 s: 0.56x torch, 10 s: 0.65x); `make bench` times both.
LINEAR_BY_CONSTRUCTION = {"crepe-full"}


def _marks(name: str, impl: str, s) -> tuple:
    marks = (pytest.mark.slow, *s.marks) if name.startswith("crepe") and impl == "torch" else s.marks
    if name in LINEAR_BY_CONSTRUCTION and s.values[0] == 10:
        marks = (*marks, pytest.mark.long_bench)
    return marks


# each MLX/torch pair back to back, so that a drift in the machine's speed (shared hosts: 0.6-0.85 s for one torch
# RMVPE entry in three runs) falls on both
CASES = [pytest.param(name, impl, s.values[0], id=f"{name}-{impl}-{s.id}", marks=_marks(name, impl, s))
         for name in MODELS for s in SECONDS for impl in ("mlx", "torch")
         if not (name in LINEAR_BY_CONSTRUCTION and s.values[0] == 60)]


@pytest.mark.parametrize("name, impl, seconds", CASES)
def test_bench_component(benchmark, parity, loaded, name, impl, seconds):
    model = _predictor(parity, loaded, name, impl)
    audio = bench.speech(seconds)
    method = getattr(model, MODELS[name][2])
    def fn():  # np.asarray forces MLX evaluation inside the timed region
        return np.asarray(method(audio))

    prof = (lambda: profile_mlx(model.model, fn)) if impl == "mlx" else (lambda: profile_torch(model.model, fn))
    warm = (lambda: method(bench.speech(1))) if seconds >= 60 else None
    out = bench.run(benchmark, impl, seconds, f"{name} {seconds}s", fn, rounds=1 if seconds >= 60 else 3,
                    profile=prof, warm=warm)
    n = audio.shape[0]
    frames = (n - 400) // 320 + 1 if name == "hubert" else n // 160 + 1
    assert out.shape[0] == frames and np.isfinite(out).all()
