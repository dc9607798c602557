"""RMVPE public API on both sides: F0 agreement on the whole speech input, chunking, shapes, bad input,
strict and safe checkpoint loading."""

import pickle
import shutil

import numpy as np
import pytest
import torch

from reference_torch.rmvpe import RMVPE as TwinRMVPE
from rvc_common.config import RMVPE as CFG
from rvc_mlx.checkpoints import CheckpointError, convert_checkpoint
from rvc_mlx.rmvpe import E2E, RMVPE
from rvc_mlx.testing.components import GOLDEN
from rvc_mlx.testing.metrics import pitch_metrics
from rvc_mlx.testing.signals import read_wav


@pytest.fixture(scope="module")
def weights(parity):
    return parity.weights(parity.component("rmvpe")).path


@pytest.fixture(scope="module")
def mlx_rmvpe(weights):
    return RMVPE.from_checkpoint(weights)


@pytest.fixture(scope="module")
def oracle(weights):
    return TwinRMVPE.from_checkpoint(weights, dtype=torch.float64)


@pytest.fixture(scope="module")
def speech():
    return read_wav(GOLDEN / "inputs" / "speech.wav")


def _decision_margin_frames(salience, margin=1e-5):
    """Frames whose voicing or argmax the oracle decides by less than `margin` (allowed to flip)."""
    top2 = np.sort(salience, axis=1)[:, -2:]
    return (np.abs(top2[:, 1] - CFG.threshold) <= margin) | ((top2[:, 1] - top2[:, 0] <= margin)
                                                             & (top2[:, 1] > CFG.threshold))


def test_f0_on_whole_speech_input_within_one_cent_with_identical_voicing(mlx_rmvpe, oracle, speech):
    ref_sal = oracle.salience(speech)
    ref = oracle.f0(speech)
    got = mlx_rmvpe.f0(speech)
    assert got.shape == ref.shape == (speech.shape[0] // 160 + 1,)
    m = pitch_metrics(got, ref, ignore=_decision_margin_frames(ref_sal))
    assert m["ignored"] <= 2, m
    assert m["voiced_both"] > 50, "synthetic weights should voice a good share of frames"
    assert m["cents_p99"] <= 1.0, m
    assert m["voicing_agreement"] == 1.0, m


def test_chunked_inference_matches_the_twin_and_really_restarts_the_gru_per_chunk(mlx_rmvpe, oracle, speech):
    chunk = 64  # 241 frames -> 256 padded -> 4 chunks (the original uses 32000)
    ref = oracle.salience(speech, chunk_frames=chunk)
    got = mlx_rmvpe.salience(speech, chunk_frames=chunk)
    assert np.max(np.abs(got - ref)) <= 1e-4
    whole = oracle.salience(speech)
    assert np.max(np.abs(whole - ref)) > 1e-3  # chunk boundaries change the GRU state, as in the original


def test_salience_has_one_frame_per_hop_plus_one(mlx_rmvpe):
    for n in (CFG.min_samples, 4640, 16000):
        sal = mlx_rmvpe.salience(np.zeros(n, np.float32) + 1e-3)
        assert sal.shape == (n // 160 + 1, 360)
        assert np.all((sal >= 0) & (sal <= 1))


@pytest.mark.parametrize("audio, message", [
    (np.zeros(CFG.min_samples - 1, np.float32), "audio too short for RMVPE: 2559 samples; need >= 2560"),
    (np.full(4000, np.nan, np.float32), "NaN or Inf"),
    (np.zeros((4000, 2), np.float32), r"mono audio of shape \(N,\), got \(4000, 2\)"),
    (np.zeros(4000, np.int16), "dtype int16"),
])
def test_bad_audio_gets_the_same_clear_error_on_both_sides(mlx_rmvpe, oracle, audio, message):
    with pytest.raises(ValueError, match=message):
        mlx_rmvpe.f0(audio)
    with pytest.raises(ValueError, match=message):
        oracle.f0(audio)


def test_checkpoint_with_a_missing_and_an_extra_key_is_refused_listing_them(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    state.pop("cnn.bias")
    state["fc.9.weight"] = torch.zeros(1)
    bad = tmp_path / "rmvpe.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"missing keys: cnn.bias; unexpected keys: fc.9.weight"):
        RMVPE.from_checkpoint(bad)


def test_checkpoint_with_a_wrong_shape_names_the_key_and_both_shapes(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    state["fc.1.weight"] = torch.zeros(361, 512)
    bad = tmp_path / "rmvpe.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"fc.1.weight has shape \(361, 512\).*expects \(360, 512\)"):
        RMVPE.from_checkpoint(bad)


class _Payload:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-rvc-mlx-canary",))


def test_checkpoint_that_would_run_code_when_unpickled_is_refused(tmp_path):
    evil = tmp_path / "rmvpe.pt"
    torch.save({"cnn.weight": torch.zeros(1), "x": _Payload()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="references shutil.rmtree, which is code, not weights"):
        RMVPE.from_checkpoint(evil)


def test_converted_safetensors_loads_and_gives_identical_output(weights, mlx_rmvpe, tmp_path):
    out = convert_checkpoint(weights, "rmvpe", E2E(), tmp_path / "rmvpe.safetensors")
    again = RMVPE.from_checkpoint(out)
    x = np.sin(np.arange(4000) / 7).astype(np.float32)
    np.testing.assert_array_equal(again.salience(x), mlx_rmvpe.salience(x))


def test_safetensors_of_another_component_is_refused(tmp_path):
    from rvc_mlx.checkpoints import save_mlx_weights

    other = tmp_path / "hubert.safetensors"
    save_mlx_weights(other, {"w": np.zeros(1, np.float32)}, {"component": "hubert"})
    with pytest.raises(CheckpointError, match="holds hubert weights .*not rmvpe"):
        RMVPE.from_checkpoint(other)


def test_synthetic_checkpoint_is_in_the_original_format_with_trained_like_statistics(weights):
    state = torch.load(weights, weights_only=True)
    assert isinstance(state, dict) and len(state) == 741
    assert sum(k.endswith("num_batches_tracked") for k in state) == 118
    bn = [k[: -len(".running_var")] for k in state if k.endswith(".running_var")]
    assert all(not torch.allclose(state[f"{k}.running_var"].float(), torch.ones(1)) for k in bn)
    assert all(not torch.allclose(state[f"{k}.weight"].float(), torch.ones(1)) for k in bn)
    assert state["unet.encoder.layers.0.conv.0.conv.0.weight"].dtype == torch.float16  # as the released file


def test_weights_dir_runs_the_same_suite_against_a_live_twin(tmp_path, weights):
    from rvc_mlx.testing.harness import Parity

    shutil.copy(weights, tmp_path / "rmvpe.pt")
    result = Parity(weights_dir=tmp_path).check("rmvpe", "harmonic")
    assert result.passed, result.failure_message()
    assert result.source.startswith("live")
    assert "rmvpe.f0" in result.extra["truth"]
