"""MLX synthesizer vs the float64 twin for every variant, with injected noise (end-to-end audio check; the
per-tap harness parity for the synthesizer is still to come)."""

import numpy as np
import pytest
import torch

from reference_torch.synthesizer.model import Synthesizer as TwinSynthesizer
from rvc_mlx.checkpoints import CheckpointError
from rvc_mlx.config import synth_variants
from rvc_mlx.synthesizer.inputs import coarse_pitch, make_noise
from rvc_mlx.synthesizer.model import Synthesizer
from rvc_mlx.testing.metrics import tensor_metrics
from rvc_mlx.testing.synthetic import cached_checkpoint

VARIANTS = sorted(synth_variants())


def _inputs(cfg, frames, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((frames, cfg.text_enc_hidden_dim)).astype(np.float32)
    hz = np.where(np.arange(frames) % 5 == 0, 0.0, 140.0 + 9 * np.arange(frames)).astype(np.float32)
    return feats, coarse_pitch(hz), hz


@pytest.mark.parametrize("variant", VARIANTS)
def test_mlx_audio_matches_the_float64_twin_within_torch_float32_error(variant):
    path = cached_checkpoint(f"synth-{variant}")
    mlx = Synthesizer.from_checkpoint(path)
    oracle = TwinSynthesizer.from_checkpoint(path, dtype=torch.float64)
    t32 = TwinSynthesizer.from_checkpoint(path, dtype=torch.float32)
    feats, coarse, hz = _inputs(mlx.cfg, 4)
    noise = make_noise(mlx.cfg, 4, seed=7)
    ref = oracle.infer(feats, coarse, hz, 3, noise)
    got = mlx.infer(feats, coarse, hz, 3, noise)
    m, t = tensor_metrics(got, ref), tensor_metrics(t32.infer(feats, coarse, hz, 3, noise), ref)
    assert got.shape == ref.shape == (4 * mlx.cfg.upp,)
    assert m["snr_db"] >= 60.0, m
    for key in ("max_rel", "rmse_rel"):
        assert m[key] <= 4 * t[key] + 1e-6, (key, m[key], t[key])


def test_no_f0_model_runs_end_to_end_without_pitch():
    mlx = Synthesizer.from_checkpoint(cached_checkpoint("synth-v2-40k-nof0"))
    feats, _, _ = _inputs(mlx.cfg, 3)
    audio = mlx.infer(feats, speaker_id=1, noise=make_noise(mlx.cfg, 3, seed=1))
    assert audio.shape == (1200,) and np.all(np.isfinite(audio))


def test_mlx_refuses_a_checkpoint_whose_config_disagrees_with_its_weights(tmp_path):
    ckpt = torch.load(cached_checkpoint("synth-v2-40k-f0"), weights_only=True)
    ckpt["config"][12] = [10, 10, 2, 4]  # upsample rates no longer match ups.3's kernel
    ckpt["config"][14] = [16, 16, 4, 8]
    bad = tmp_path / "model.pth"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"model.pth: dec\.\S+ has shape \(.*\) after conversion, model expects"):
        Synthesizer.from_checkpoint(bad)
