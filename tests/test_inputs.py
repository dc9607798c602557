"""Committed inputs: 16 kHz mono float WAVs (and a 44.1 kHz stereo one made from the speech); the known-F0 signal and
its truth equal the generator's output."""

import numpy as np

from rvc_mlx.testing.components import GOLDEN
from rvc_mlx.testing.signals import HOP, SR, harmonic_f0, harmonic_signal, read_truth, read_wav, silence_noise_signal


def test_speech_input_is_a_real_16k_mono_utterance():
    x = read_wav(GOLDEN / "inputs" / "speech.wav")
    assert 1.0 < x.shape[0] / SR < 5.0
    assert 0.5 < np.max(np.abs(x)) <= 1.0
    assert (GOLDEN / "inputs" / "README.md").read_text().count("espeak-ng") >= 1


def test_synthetic_inputs_and_truth_equal_the_generators():
    np.testing.assert_array_equal(read_wav(GOLDEN / "inputs" / "silence_noise.wav"), silence_noise_signal())
    audio, truth = harmonic_signal()
    np.testing.assert_array_equal(read_wav(GOLDEN / "inputs" / "harmonic.wav"), audio)
    np.testing.assert_allclose(read_truth(GOLDEN / "inputs" / "harmonic_f0.csv"), truth, atol=1e-6)


def test_harmonic_truth_is_voiced_only_inside_the_voiced_span_and_on_the_frame_grid():
    truth = read_truth(GOLDEN / "inputs" / "harmonic_f0.csv")
    np.testing.assert_allclose(np.diff(truth[:, 0]), HOP / SR, atol=1e-6)
    voiced = truth[:, 1] > 0
    assert voiced.sum() == 80 and truth[voiced, 1].min() > 140 and truth[voiced, 1].max() < 300
    np.testing.assert_allclose(truth[voiced, 1], harmonic_f0(truth[voiced, 0]), rtol=1e-6)



def test_stereo_44k_input_is_made_from_speech_with_channels_that_differ():
    from rvc_mlx.testing.signals import STEREO_SR, read_audio, stereo_44k_signal

    audio, sr = read_audio(GOLDEN / "inputs" / "speech_44k_stereo.wav")
    assert sr == STEREO_SR == 44100 and audio.shape == (44100, 2)
    # 16-bit PCM of the generator's output (soxr may round differently on other CPUs: within one step)
    expected = stereo_44k_signal(read_wav(GOLDEN / "inputs" / "speech.wav"))
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1.5 / 32768)
    left, right = audio[:, 0], audio[:, 1]
    assert np.max(np.abs(left - right)) > 0.1 * np.max(np.abs(left))  # averaging the channels matters
