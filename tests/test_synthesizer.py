"""MLX synthesizer vs the float64 twin for every variant, with injected noise (end-to-end audio check), and the
generator's chunked resblock stages (fused on the kernels, and on pure MLX) against the float64 original."""

import numpy as np
import pytest
import torch

from reference_torch.synthesizer.model import Synthesizer as TwinSynthesizer
from rvc_common.config import synth_variants
from rvc_common.inputs import coarse_pitch, make_noise
from rvc_mlx.checkpoints import CheckpointError
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
    why = r"model.pth: invalid RVC model: config upsample_rates=10x10x2x4 but dec.noise_convs kernels 80,8,4,1 imply"
    with pytest.raises(CheckpointError, match=why):
        Synthesizer.from_checkpoint(bad)


def _stage_blocks(channels=8):
    import mlx.core as mx

    from rvc_mlx.synthesizer.nsf_hifigan import ResBlock

    mx.random.seed(3)
    return [ResBlock(channels, k, (1, 3, 5), 0.1) for k in (3, 7, 11)]


def _stage_reference(blocks, x: np.ndarray, dtype) -> np.ndarray:
    """The stage as the original computes it (each block on the whole padded signal, then their mean), in torch."""
    import torch.nn.functional as F

    def w(a):
        return torch.from_numpy(np.array(a)).to(dtype)

    xt = torch.from_numpy(x).to(dtype).permute(0, 2, 1)
    outs = []
    for b in blocks:
        y = xt
        for c1, c2 in zip(b.convs1, b.convs2, strict=True):
            t = F.conv1d(F.leaky_relu(y, 0.1), w(c1.weight).permute(0, 2, 1), w(c1.bias), padding=c1.padding,
                         dilation=c1.dilation)
            y = F.conv1d(F.leaky_relu(t, 0.1), w(c2.weight).permute(0, 2, 1), w(c2.bias), padding=c2.padding) + y
        outs.append(y)
    return (sum(outs[1:], outs[0]) / len(outs)).permute(0, 2, 1).numpy()


def _run_stage(blocks, x, frames):
    import mlx.core as mx
    import mlx.nn as nn

    from rvc_mlx import dispatch
    from rvc_mlx.synthesizer import nsf_hifigan
    from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder

    with dispatch.use_chunks(resblock_frames=frames), MLXRecorder(nn.Module(), LayoutMap((LayoutRule("*", "NLC"),))) \
            as rec:
        out = np.array(nsf_hifigan.resblock_stage(blocks, mx.array(x)))
    return out, rec


def _judge_against_the_oracle(blocks, x, got):
    ref = _stage_reference(blocks, x, torch.float64)
    m, t = tensor_metrics(got, ref), tensor_metrics(_stage_reference(blocks, x, torch.float32), ref)
    for key in ("max_rel", "rmse_rel"):
        assert m[key] <= 4 * t[key] + 1e-6, (key, m[key], t[key])


@pytest.mark.parametrize("length", [1000, 241, 30])
@pytest.mark.parametrize("channels", [8, 32])
def test_resblock_stage_in_padded_time_chunks_on_the_kernels_matches_the_float64_oracle(isa, length, channels):
    from rvc_mlx import dispatch

    blocks = _stage_blocks(channels)
    x = np.random.default_rng(length).standard_normal((1, length, channels)).astype(np.float32)
    got, rec = _run_stage(blocks, x, 100)
    assert rec.splits["synth resblock time chunks"] == -(-length // 100)
    fused = channels % dispatch.lanes() == 0  # whole vectors: the stage runs fused on the host
    assert (f"kernel conv1d+leaky+add {isa}" in rec.implementations()) == fused
    _judge_against_the_oracle(blocks, x, got)
    if fused:  # the same kernel sums every output frame in the same order, whatever chunk holds it
        np.testing.assert_array_equal(got, _run_stage(blocks, x, length)[0])


@pytest.mark.parametrize("length", [1000, 241, 30])
def test_resblock_stage_in_padded_time_chunks_on_pure_mlx_matches_the_float64_oracle(pure_mlx, length):
    blocks = _stage_blocks(32)
    x = np.random.default_rng(length).standard_normal((1, length, 32)).astype(np.float32)
    got, rec = _run_stage(blocks, x, 100)
    assert rec.splits["synth resblock time chunks"] == -(-length // 100)
    assert not any(i.startswith("kernel") for i in rec.implementations())
    _judge_against_the_oracle(blocks, x, got)


def test_resblock_stage_calls_every_conv_on_the_whole_signal_only_layer_by_layer():
    import mlx.core as mx
    import mlx.nn as nn

    from rvc_mlx.synthesizer import nsf_hifigan
    from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder

    dec = nn.Module()
    dec.resblocks = _stage_blocks()
    x = mx.random.normal((1, 50, 8))
    with MLXRecorder(dec, LayoutMap((LayoutRule("*", "NLC"),)), layer_by_layer=True) as rec:
        nsf_hifigan.resblock_stage(dec.resblocks, x)
    conv = rec.records["resblocks.2.convs1.2"]  # every conv called as the original does: padded input
    assert conv.value.shape == (1, 8, 50)
    with MLXRecorder(dec, LayoutMap((LayoutRule("*", "NLC"),))) as rec:  # shipped: blocks run on chunks or fused
        nsf_hifigan.resblock_stage(dec.resblocks, x)
    assert not {"resblocks.0", "resblocks.1", "resblocks.2"} & set(rec.records)


def test_generator_in_time_chunks_matches_the_float64_twin(monkeypatch):
    from rvc_mlx import dispatch

    monkeypatch.setattr(dispatch, "RESBLOCK_CHUNK_BYTES", 1)  # every stage in chunks of 4 x its widest margin
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
