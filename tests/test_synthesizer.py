"""MLX synthesizer vs the float64 twin for every variant, with injected noise (end-to-end audio check), and the
generator's chunked resblock stages against the original call path."""

import sys

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


def _stage_blocks(channels=8):
    import mlx.core as mx
    from rvc_mlx.synthesizer.nsf_hifigan import ResBlock

    mx.random.seed(3)
    return [ResBlock(channels, k, (1, 3, 5), 0.1) for k in (3, 7, 11)]


@pytest.mark.parametrize("length", [1000, 241, 30])
@pytest.mark.parametrize("channels", [8, 32])  # 32: the fused kernel path on Linux (whole 16-lane vectors)
def test_resblock_stage_in_padded_time_chunks_equals_the_original_call_path_bit_for_bit(monkeypatch, length,
                                                                                       channels):
    import mlx.core as mx
    from rvc_mlx import cpu_kernels
    from rvc_mlx.synthesizer import nsf_hifigan

    blocks = _stage_blocks(channels)
    x = mx.random.normal((1, length, channels))
    original = [b(x) for b in blocks]
    expected = np.array(sum(original[1:], original[0]) / 3)
    monkeypatch.setattr(nsf_hifigan, "CHUNK_BYTES", 4 * channels * 100)  # 240-frame chunks (floor: 4 x margin 60)
    fused = []
    monkeypatch.setattr(nsf_hifigan.ResBlock, "fused", lambda self, *a, __f=nsf_hifigan.ResBlock.fused:
                        fused.append(1) or __f(self, *a))
    got = np.array(nsf_hifigan.resblock_stage(blocks, x))
    assert got.shape == expected.shape == (1, length, channels)
    np.testing.assert_array_equal(got, expected)
    assert bool(fused) == (channels == 32 and sys.platform.startswith("linux")) == cpu_kernels.fits(
        x, channels)


def test_resblock_stage_takes_the_tapped_call_path_while_recording():
    import mlx.core as mx
    import mlx.nn as nn
    from rvc_mlx.synthesizer import nsf_hifigan
    from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder

    dec = nn.Module()
    dec.resblocks = _stage_blocks()
    x = mx.random.normal((1, 50, 8))
    with MLXRecorder(dec, LayoutMap((LayoutRule("*", "NLC"),))) as rec:
        nsf_hifigan.resblock_stage(dec.resblocks, x)
    conv = rec.records["resblocks.2.convs1.2"]  # every conv called as the original does: padded input
    assert conv.value.shape == (1, 8, 50)


def test_generator_in_time_chunks_matches_the_float64_twin(monkeypatch):
    from rvc_mlx.synthesizer import nsf_hifigan

    monkeypatch.setattr(nsf_hifigan, "CHUNK_BYTES", 1)  # every stage in chunks of 4 x its widest margin
    path = cached_checkpoint("synth-v2-40k-f0")
    mlx = Synthesizer.from_checkpoint(path)
    oracle = TwinSynthesizer.from_checkpoint(path, dtype=torch.float64)
    t32 = TwinSynthesizer.from_checkpoint(path, dtype=torch.float32)
    feats, coarse, hz = _inputs(mlx.cfg, 5)  # a 500-frame stage: chunks 240, 240, 20 (shorter than the halo)
    noise = make_noise(mlx.cfg, 5, seed=7)
    ref = oracle.infer(feats, coarse, hz, 3, noise)
    m = tensor_metrics(mlx.infer(feats, coarse, hz, 3, noise), ref)
    t = tensor_metrics(t32.infer(feats, coarse, hz, 3, noise), ref)
    assert m["snr_db"] >= 60.0, m
    for key in ("max_rel", "rmse_rel"):
        assert m[key] <= 4 * t[key] + 1e-6, (key, m[key], t[key])
