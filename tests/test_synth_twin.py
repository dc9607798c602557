"""Synthesizer twin: every variant's synthetic .pth (Applio format, fp16, no enc_q) loads strictly and
synthesises deterministically from injected noise; inconsistent checkpoints are refused clearly."""

import numpy as np
import pytest
import torch

from reference_torch.synthesizer.model import Synthesizer
from rvc_common.config import synth_variants
from rvc_common.inputs import coarse_pitch, make_noise
from rvc_mlx.checkpoints import CheckpointError, read_rvc_checkpoint
from rvc_mlx.testing.synthetic import cached_checkpoint

VARIANTS = sorted(synth_variants())


def _inputs(cfg, frames=6, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((frames, cfg.text_enc_hidden_dim)).astype(np.float32)
    hz = np.where(np.arange(frames) % 4 == 0, 0.0, 120.0 + 15 * np.arange(frames)).astype(np.float32)
    return feats, coarse_pitch(hz), hz


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_loads_strictly_and_synthesises_from_injected_noise(variant):
    path = cached_checkpoint(f"synth-{variant}")
    ckpt = torch.load(path, weights_only=True)
    assert not any(k.startswith("enc_q.") for k in ckpt["weight"])
    assert {v.dtype for v in ckpt["weight"].values()} == {torch.float16}
    assert len(ckpt["config"]) == 18 and ckpt["version"] in ("v1", "v2")
    twin = Synthesizer.from_checkpoint(path)
    feats, coarse, hz = _inputs(twin.cfg)
    noise = make_noise(twin.cfg, feats.shape[0], seed=3)
    a = twin.infer(feats, coarse, hz, 0, noise)
    assert a.shape == (feats.shape[0] * twin.cfg.upp,)
    assert np.all(np.isfinite(a)) and 0.01 < np.sqrt(np.mean(a * a)) and np.max(np.abs(a)) < 1
    np.testing.assert_array_equal(twin.infer(feats, coarse, hz, 0, noise), a)
    assert not np.array_equal(twin.infer(feats, coarse, hz, 0, None), a)  # without noise: own draws


def test_spk_embed_dim_that_disagrees_with_the_weights_is_refused_by_the_port_and_overridden_by_the_twin(tmp_path):
    ckpt = torch.load(cached_checkpoint("synth-v2-40k-f0"), weights_only=True)
    ckpt["config"][-3] = 4
    bad = tmp_path / "model.pth"
    torch.save(ckpt, bad)
    why = r"invalid RVC model: config spk_embed_dim=4 but emb_g.weight \(109, 256\) implies 109"
    with pytest.raises(CheckpointError, match=why):
        read_rvc_checkpoint(bad)
    assert Synthesizer.from_checkpoint(bad).cfg.spk_embed_dim == 109  # as the original reader does


def test_version_that_disagrees_with_the_feature_width_is_refused_by_port_and_twin(tmp_path):
    ckpt = torch.load(cached_checkpoint("synth-v2-40k-f0"), weights_only=True)
    ckpt["version"] = "v1"
    bad = tmp_path / "model.pth"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"invalid RVC model: config version=v1 takes 256-d content features"):
        read_rvc_checkpoint(bad)
    with pytest.raises(RuntimeError, match=r"size mismatch for enc_p.emb_phone.weight"):  # torch's strict load
        Synthesizer.from_checkpoint(bad)


def test_bad_synthesizer_inputs_get_clear_errors():
    twin = Synthesizer.from_checkpoint(cached_checkpoint("synth-v2-40k-f0"))
    feats, coarse, hz = _inputs(twin.cfg)
    with pytest.raises(ValueError, match=r"features must be \(frames, 768\) for a v2 model"):
        twin.infer(feats[:, :256], coarse, hz)
    with pytest.raises(ValueError, match="pass pitch_coarse and pitch_hz"):
        twin.infer(feats)
    with pytest.raises(ValueError, match="speaker_id 200 out of range"):
        twin.infer(feats, coarse, hz, speaker_id=200)
    with pytest.raises(ValueError, match=r"noise.eps_zp must be \(1, 192, 6\)"):
        twin.infer(feats, coarse, hz, 0, make_noise(twin.cfg, 5, 0))
