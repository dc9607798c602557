"""FCPE with the trained weights shipped in torchfcpe 0.0.4: the twin equals the package bit for bit, the MLX
port matches the float64 twin (module by module and on F0), bad input and foreign checkpoints are refused."""

from pathlib import Path

import numpy as np
import pytest
import torch

from reference_torch.fcpe import FCPE as TwinFCPE
from rvc_mlx.checkpoints import CheckpointError, converted_path
from rvc_mlx.fcpe import FCPE, FCPE_CFG
from rvc_mlx.testing.metrics import pitch_metrics
from rvc_mlx.testing.packages import asset, import_package
from rvc_mlx.testing.signals import read_wav
from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder, TorchRecorder

SPEECH = Path(__file__).resolve().parents[1] / "golden" / "inputs" / "speech.wav"
# MLX layout of each module output: channels-last where torch's conv stack is (B, C, T).
LAYOUTS = LayoutMap((
    LayoutRule("input_stack*", output="NLC"),
    LayoutRule("net.encoder_layers.*.conformer.net.[1-6]*", output="NLC"),  # between the two Transposes
    LayoutRule("*", output="same"),
))


@pytest.fixture(scope="module")
def weights():
    return asset("fcpe")


@pytest.fixture(scope="module")
def package(weights):
    torchfcpe = import_package("torchfcpe")
    return torchfcpe.spawn_infer_model_from_pt(str(weights), "cpu", bundled_model=True)


@pytest.fixture(scope="module")
def twin(weights):
    return TwinFCPE.from_checkpoint(weights)


@pytest.fixture(scope="module")
def oracle(weights):
    return TwinFCPE.from_checkpoint(weights, dtype=torch.float64)


@pytest.fixture(scope="module")
def mlx_fcpe(weights):
    return FCPE.from_checkpoint(weights)


@pytest.fixture(scope="module")
def speech():
    audio = read_wav(SPEECH)
    assert audio.shape == (38454,)
    return audio


def _package_run(package, audio):
    """The package's mel, latent and F0 exactly as RVC calls it (wav (1, N), 16 kHz, local_argmax, 0.006)."""
    wav = torch.from_numpy(audio).float().unsqueeze(0)
    with torch.no_grad():
        mel = package.wav2mel(wav, 16000)
        latent = package.model(mel)[0]
    f0 = package.infer(wav, sr=16000, decoder_mode="local_argmax", threshold=0.006).squeeze().numpy()
    return mel.numpy(), latent.numpy(), f0


def test_twin_equals_installed_torchfcpe_on_speech_mel_latent_and_f0(package, twin, speech):
    mel, latent, f0 = _package_run(package, speech)
    assert f0.shape == (speech.shape[0] // 160 + 1,) and np.sum(f0 > 0) > 100
    assert np.max(np.abs(twin.mel(speech).numpy() - mel)) <= 1e-5
    assert np.max(np.abs(twin.latent(speech) - latent)) <= 1e-5
    assert np.max(np.abs(twin.f0(speech) - f0)) <= 1e-5


@pytest.mark.parametrize("n", [160, 432, 433, 1000])  # the package zero-pads up to 432 samples, reflects beyond
def test_twin_equals_torchfcpe_on_short_inputs_around_its_pad_mode_switch(package, twin, speech, n):
    audio = speech[12000:12000 + n]
    mel, latent, f0 = _package_run(package, audio)
    assert mel.shape[1] == n // 160 + 1
    assert np.max(np.abs(twin.mel(audio).numpy() - mel)) <= 1e-5
    assert np.max(np.abs(twin.latent(audio) - latent)) <= 1e-5
    assert np.max(np.abs(twin.f0(audio) - f0.reshape(-1))) <= 1e-5


def test_twin_state_dict_keys_equal_the_checkpoint_and_load_strictly(weights, twin):
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    assert set(twin.model.state_dict()) == set(state)
    twin.model.load_state_dict(state, strict=True)


def test_mlx_mel_and_latent_match_the_float64_twin_on_speech(mlx_fcpe, oracle, twin, speech):
    ref_mel = oracle.mel(speech).numpy()
    ref_latent = oracle.latent(speech)
    got_mel, got_latent = mlx_fcpe.mel(speech), mlx_fcpe.latent(speech)
    assert got_mel.shape == ref_mel.shape == (1, 241, 128) and got_latent.shape == ref_latent.shape == (241, 360)
    # float32 log-mel of near-silent bins (mel ~ clamp 1e-5) is only good to ~2e-5 relative: the float32 twin
    # gets 2.4e-5, MLX 2.1e-5.
    assert np.max(np.abs(got_mel - ref_mel)) / np.max(np.abs(ref_mel)) <= 5e-5
    assert np.max(np.abs(got_latent - ref_latent)) / np.max(np.abs(ref_latent)) <= 1e-5  # measured 4.0e-6
    # no worse than PyTorch float32 (5.3e-6), with margin for BLAS differences
    assert np.max(np.abs(got_latent - ref_latent)) <= 2 * np.max(np.abs(twin.latent(speech) - ref_latent))


def test_mlx_f0_matches_the_float64_twin_within_one_cent_with_the_same_voicing(mlx_fcpe, oracle, speech):
    ref = oracle.f0(speech)
    got = mlx_fcpe.f0(speech)
    assert got.shape == ref.shape == (241,)
    m = pitch_metrics(got, ref)
    assert m["voiced_both"] > 100, m
    assert m["cents_p99"] <= 1.0, m
    assert m["voicing_agreement"] >= 0.999, m


def test_every_mlx_module_output_matches_the_twin_under_the_same_name(mlx_fcpe, twin, speech):
    audio = speech[8000:24000]
    with TorchRecorder(twin.model) as ref:
        twin.f0(audio)
    with MLXRecorder(mlx_fcpe.model, LAYOUTS, layer_by_layer=True) as got:  # every layer called
        mlx_fcpe.f0(audio)
    ref_taps, got_taps = ref.values(), got.values()
    # MLX keeps nn.Sequential as plain lists (no module, no tap); their output is their last child's.
    containers = {n for n, r in ref.records.items() if r.module_type == "Sequential"}
    assert containers == {"input_stack"} | {f"net.encoder_layers.{i}.conformer.net" for i in range(6)}
    assert set(got_taps) == set(ref_taps) - containers
    assert {"fcpe.mel", "fcpe.latent", "fcpe.f0", "model", "output_proj", "net.encoder_layers.5.conformer.net.4.conv",
            "input_stack.1"} <= set(ref_taps)
    for name in got_taps:
        value = ref_taps[name]
        assert got_taps[name].shape == value.shape, name
        scale = max(float(np.max(np.abs(value))), 1e-3)
        assert np.max(np.abs(got_taps[name] - value)) <= 1e-4 * scale, name


@pytest.mark.parametrize("n", [FCPE_CFG.min_samples, 433, 4000])
def test_output_has_one_frame_per_hop_plus_one_on_both_sides(mlx_fcpe, twin, n):
    audio = (0.1 * np.sin(np.arange(n) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    for model in (mlx_fcpe, twin):
        latent, f0 = model.latent(audio), model.f0(audio)
        assert latent.shape == (n // 160 + 1, 360) and f0.shape == (n // 160 + 1,)
        assert np.all((latent >= 0) & (latent <= 1)) and np.all(f0 >= 0)


def test_digital_silence_is_unvoiced_and_never_nan(mlx_fcpe, twin):
    for model in (mlx_fcpe, twin):
        f0 = model.f0(np.zeros(8000, np.float32))
        assert np.all(f0 == 0)


@pytest.mark.parametrize("audio, message", [
    (np.zeros(0, np.float32), "audio too short for FCPE: 0 samples; need >= 160"),
    (np.zeros(159, np.float32), "audio too short for FCPE: 159 samples; need >= 160"),
    (np.zeros((4000, 2), np.float32), r"mono audio of shape \(N,\), got \(4000, 2\)"),
    (np.full(4000, np.nan, np.float32), "NaN or Inf"),
    (np.zeros(4000, np.int16), "dtype int16"),
])
def test_bad_audio_gets_the_same_one_line_error_on_both_sides(mlx_fcpe, twin, audio, message):
    for model in (mlx_fcpe, twin):
        with pytest.raises(ValueError, match=message) as info:
            model.f0(audio)
        assert "\n" not in str(info.value)


def _save(tmp_path, obj, name="fcpe.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_plain_state_dict_is_not_an_fcpe_checkpoint_on_both_sides(tmp_path):
    bad = _save(tmp_path, {"cnn.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"fcpe.pt: not an FCPE checkpoint \(expected a dict with 'model'"):
        FCPE.from_checkpoint(bad)
    with pytest.raises(ValueError, match=r"fcpe.pt: not a torchfcpe checkpoint \(expected a dict with 'model'"):
        TwinFCPE.from_checkpoint(bad)


def test_fcpe_checkpoint_with_another_mel_config_is_refused_naming_the_field(weights, tmp_path):
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    ckpt["config_dict"]["mel"]["fmax"] = 16000
    bad = _save(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match="FCPE config mel.fmax is 16000; this port implements 8000 only"):
        FCPE.from_checkpoint(bad)
    with pytest.raises(ValueError, match="FCPE config mel.fmax is 16000; the twin implements 8000"):
        TwinFCPE.from_checkpoint(bad)


def test_fcpe_checkpoint_with_a_missing_key_is_refused_listing_it(weights, tmp_path):
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    ckpt["model"].pop("norm.bias")
    bad = _save(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match="missing keys: norm.bias"):
        FCPE.from_checkpoint(bad)
    with pytest.raises(RuntimeError, match='Missing key.*"norm.bias"'):
        TwinFCPE.from_checkpoint(bad)


def test_converted_safetensors_loads_and_gives_identical_f0(weights, mlx_fcpe, speech):
    again = FCPE.from_checkpoint(converted_path(weights, "fcpe"))  # written by the fixture's first load
    np.testing.assert_array_equal(again.f0(speech), mlx_fcpe.f0(speech))
