"""Synthesizer speed per sample rate (v2, f0): MLX vs the twin on the same generated inputs and noise."""

import numpy as np
import pytest
import torch

from rvc_mlx.testing import bench
from rvc_mlx.testing.components import CaseSpec
from rvc_mlx.testing.profile import profile_mlx, profile_torch

SECONDS = [pytest.param(1, id="1s"), pytest.param(10, id="10s", marks=pytest.mark.slow),
           pytest.param(60, id="60s", marks=(pytest.mark.slow, pytest.mark.long_bench))]


# impl (the outermost decorator) varies fastest: each MLX/torch pair runs back to back, so that a drift in the
# machine's speed falls on both
@pytest.mark.parametrize("impl", ["mlx", "torch"])
@pytest.mark.parametrize("seconds", SECONDS)
@pytest.mark.parametrize("variant", ["v2-32k-f0", "v2-40k-f0", "v2-48k-f0"])
def test_bench_synth(benchmark, parity, variant, impl, seconds):
    comp = parity.component("synth")
    spec = dict(component="synth", name="bench", input="generated", variant=variant, seed=1)
    case = CaseSpec(frames=100 * seconds, **spec)
    w = comp.weights(None, case)
    model = comp.mlx(w) if impl == "mlx" else comp.twin(w, torch.float32)
    inputs, _ = comp.load_input(case)
    run = comp.run_mlx if impl == "mlx" else comp.run_twin
    def fn():
        return np.asarray(run(model, inputs))

    prof = (lambda: profile_mlx(model.model, fn)) if impl == "mlx" else (lambda: profile_torch(model.model, fn))
    warm = None
    if seconds >= 60:
        short, _ = comp.load_input(CaseSpec(frames=100, **spec))

        def warm():
            return np.asarray(run(model, short))
    out = bench.run(benchmark, impl, seconds, f"synth {variant} {seconds}s", fn, rounds=1 if seconds >= 60 else 3,
                    profile=prof, warm=warm)
    assert out.size == 100 * seconds * model.cfg.sr // 100 and np.isfinite(out).all()
