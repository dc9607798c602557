"""RMVPE speed: MLX vs the PyTorch twin on the same input in the same run (ratios in the report)."""

import numpy as np
import pytest
import torch

from rvc_mlx.testing.components import GOLDEN
from rvc_mlx.testing.signals import read_wav

SECONDS = [pytest.param(1, id="1s"), pytest.param(10, id="10s", marks=pytest.mark.slow)]


def _audio(seconds):
    speech = read_wav(GOLDEN / "inputs" / "speech.wav")
    return np.resize(speech, seconds * 16000).astype(np.float32)


@pytest.mark.parametrize("seconds", SECONDS)
@pytest.mark.parametrize("impl", ["mlx", "torch"])
def test_bench_rmvpe_f0(benchmark, parity, impl, seconds):
    comp = parity.component("rmvpe")
    weights = comp.weights(None)
    model = comp.mlx(weights) if impl == "mlx" else comp.twin(weights, torch.float32)
    audio = _audio(seconds)
    benchmark.group = f"rmvpe f0 {seconds}s"
    benchmark.extra_info.update(impl=impl, seconds=seconds)
    f0 = benchmark.pedantic(model.f0, args=(audio,), rounds=3, warmup_rounds=1)
    assert f0.shape == (audio.shape[0] // 160 + 1,)  # np.array(...) inside f0 forces MLX evaluation
