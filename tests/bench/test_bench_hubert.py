"""HuBERT speed: MLX vs the PyTorch twin on the same input in the same run (ratios in the report)."""

import numpy as np
import pytest
import torch

from rvc_mlx.testing.components import GOLDEN
from rvc_mlx.testing.signals import read_wav

SECONDS = [pytest.param(1, id="1s"), pytest.param(10, id="10s", marks=pytest.mark.slow)]


@pytest.mark.parametrize("seconds", SECONDS)
@pytest.mark.parametrize("impl", ["mlx", "torch"])
def test_bench_hubert_features(benchmark, parity, impl, seconds):
    comp = parity.component("hubert")
    weights = comp.weights(None)
    model = comp.mlx(weights) if impl == "mlx" else comp.twin(weights, torch.float32)
    audio = np.resize(read_wav(GOLDEN / "inputs" / "speech.wav"), seconds * 16000).astype(np.float32)
    benchmark.group = f"hubert features {seconds}s"
    benchmark.extra_info.update(impl=impl, seconds=seconds)
    feats = benchmark.pedantic(model.features, args=(audio,), rounds=3, warmup_rounds=1)
    assert feats.shape == ((audio.shape[0] - 400) // 320 + 1, 768)  # np.array(...) forces MLX evaluation
