"""End-to-end conversion speed (16 kHz speech -> ContentVec + RMVPE + faiss index + v2 40k synthesizer): MLX
pipeline vs the twin pipeline, same options and seed. The 60 s entry also checks that cost grows linearly."""

import numpy as np
import pytest
import torch

from rvc_mlx.testing import bench
from rvc_mlx.testing.components import CaseSpec
from rvc_mlx.testing.profile import profile_mlx, profile_torch

SECONDS = [pytest.param(1, id="1s"), pytest.param(10, id="10s", marks=pytest.mark.slow),
           pytest.param(60, id="60s", marks=(pytest.mark.slow, pytest.mark.long_bench))]
CASE = CaseSpec(component="pipeline", name="bench", input="speech", variant="v2-40k-f0", f0_method="rmvpe",
                index=True, seed=3)
OPTIONS = {"f0_method": "rmvpe", "index_rate": 0.75, "protect": 0.33, "seed": 3}


def _roots(model, impl):
    if impl == "mlx":
        return [model.hubert.model, model.synth.model, model._pitch["rmvpe"].model]
    return [model.hubert.model, model.synth.model, model.pitch_models["rmvpe"].model]


# the torch pipeline's 1 s smoke run (~14 s) re-checks only the twin that the pipeline goldens' freshness test runs;
# impl varies fastest: each MLX/torch pair runs back to back, so that a drift in the machine's speed falls on
# both
@pytest.mark.parametrize("impl", ["mlx", pytest.param("torch", marks=pytest.mark.slow)])
@pytest.mark.parametrize("seconds", SECONDS)
def test_bench_pipeline(benchmark, parity, impl, seconds):
    comp = parity.component("pipeline")
    w = comp.weights(None, CASE)
    model = comp.mlx(w) if impl == "mlx" else comp.twin(w, torch.float32)
    inputs = {"audio": bench.speech(seconds), "sr": 16000, **OPTIONS}
    run = comp.run_mlx if impl == "mlx" else comp.run_twin
    def fn():
        return np.asarray(run(model, inputs))

    profiler = profile_mlx if impl == "mlx" else profile_torch
    warm = (lambda: run(model, {**inputs, "audio": bench.speech(1)})) if seconds >= 60 else None
    out = bench.run(benchmark, impl, seconds, f"pipeline v2-40k-f0 rmvpe {seconds}s", fn,
                    rounds=1 if seconds >= 60 else 3, profile=lambda: profiler(_roots(model, impl), fn), warm=warm)
    sr = model.synth.cfg.sr  # the original trims up to a window at the end
    assert 0.95 * seconds * sr <= out.size <= seconds * sr and np.isfinite(out).all()
