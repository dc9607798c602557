"""Audio metrics: SNR, SI-SDR, multi-resolution STFT distance and LSD give the textbook values."""

import math

import numpy as np
import pytest

from rvc_mlx.testing.audio_metrics import (
    _stft,
    audio_metrics,
    log_spectral_distance_db,
    multi_resolution_stft_distance,
    si_sdr_db,
    snr_db,
)

SR = 40000


def _tone(n: int, f: float = 440.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * f * np.arange(n) / sr)


def test_identical_signals_have_infinite_snr_and_zero_spectral_distance():
    ref = _tone(8000) + 0.01 * np.random.default_rng(0).standard_normal(8000)
    m = audio_metrics(ref, ref.copy(), SR)
    assert m["snr_db"] == math.inf and m["si_sdr_db"] == math.inf
    assert m["mrstft"] == 0.0 and m["lsd_db"] == 0.0 and m["max_abs"] == 0.0 and m["length"] == 8000


def test_white_noise_at_minus_40_db_gives_40_db_snr_and_si_sdr():
    rng = np.random.default_rng(1)
    ref = _tone(SR)
    noise = rng.standard_normal(SR) * math.sqrt(1e-4 * np.mean(ref**2))
    m = audio_metrics(ref + noise, ref, SR)
    assert m["snr_db"] == pytest.approx(40.0, abs=0.5)
    assert m["si_sdr_db"] == pytest.approx(40.0, abs=0.5)


def test_si_sdr_ignores_a_gain_on_the_estimate_but_snr_does_not():
    rng = np.random.default_rng(2)
    ref = _tone(SR)
    est = ref + 0.005 * rng.standard_normal(SR)
    assert si_sdr_db(0.5 * est, ref) == pytest.approx(si_sdr_db(est, ref), abs=1e-9)
    assert snr_db(est, ref) > 30.0
    assert snr_db(0.5 * est, ref) < 7.0  # error is about half the reference: ~6 dB


def test_si_sdr_removes_the_mean_so_a_dc_offset_is_ignored():
    ref = _tone(4000)
    assert si_sdr_db(ref + 0.3, ref) > 100.0
    assert snr_db(ref + 0.3, ref) < 5.0


def test_one_sample_delay_is_spectrally_close_despite_poor_snr():
    # what the spectral metrics are for: a sub-period timing offset ruins SNR but not the sound
    x = _tone(SR + 1)
    ref, est = x[1:], x[:-1]
    m = audio_metrics(est, ref, SR)
    expected_snr = -20 * math.log10(2 * math.sin(math.pi * 440 / SR))  # |x(n) - x(n-1)| / |x| = 2 sin(pi f/fs)
    assert m["snr_db"] == pytest.approx(expected_snr, abs=0.1) and m["snr_db"] < 25.0
    assert m["mrstft"] < 0.1 and m["lsd_db"] < 0.5
    # white noise at the same SNR is far away spectrally
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(SR)
    noise *= np.linalg.norm(est - ref) / np.linalg.norm(noise)
    n = audio_metrics(ref + noise, ref, SR)
    assert n["snr_db"] == pytest.approx(m["snr_db"], abs=1e-9)
    assert n["mrstft"] > 50 * m["mrstft"] and n["lsd_db"] > 50 * m["lsd_db"]


def test_snr_matches_hand_computed_values():
    # ref energy 2, error energy 1 -> 10 log10(2)
    assert snr_db(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(10 * math.log10(2))
    # ref energy 1, error energy 1 -> 0 dB
    assert snr_db(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.0)
    assert snr_db(np.array([1.0, 0.0]), np.array([0.0, 0.0])) == -math.inf
    assert snr_db(np.zeros(3), np.zeros(3)) == math.inf


def test_si_sdr_matches_hand_computed_value_with_mean_removal():
    # est - mean = [1.75, -1.25, 0.75, -1.25]; alpha = 5 / 4; target energy 6.25; noise [.5, 0, -.5, 0] -> 0.5
    est = np.array([2.0, -1.0, 1.0, -1.0])
    ref = np.array([1.0, -1.0, 1.0, -1.0])
    assert si_sdr_db(est, ref) == pytest.approx(10 * math.log10(6.25 / 0.5))


def test_si_sdr_of_silent_estimate_is_minus_infinity():
    assert si_sdr_db(np.zeros(4), np.array([1.0, -1.0, 1.0, -1.0])) == -math.inf
    assert si_sdr_db(np.full(4, 2.0), np.full(4, 1.0)) == math.inf  # both constant: equal up to the offset


def test_doubling_the_signal_gives_spectral_convergence_1_plus_log_2_and_6_db_lsd():
    # |S_est| = 2 |S_ref| in every bin: sc = 1, log term = ln 2 (eps negligible for white noise); LSD = 10 log10 4
    ref = np.random.default_rng(4).standard_normal(5000)
    assert multi_resolution_stft_distance(2 * ref, ref, SR) == pytest.approx(1 + math.log(2), abs=1e-6)
    assert multi_resolution_stft_distance(2 * ref, ref, SR, resolutions=((256, 64, 128),)) == pytest.approx(
        1 + math.log(2), abs=1e-6)
    assert log_spectral_distance_db(2 * ref, ref, SR) == pytest.approx(10 * math.log10(4), abs=1e-6)


def test_stft_matches_librosa_centered_reflect_padded_stft():
    librosa = pytest.importorskip("librosa")
    x = np.random.default_rng(5).standard_normal(3001)
    for n_fft, hop, win in ((512, 128, 512), (1024, 256, 600)):
        ours = _stft(x, n_fft, hop, win)
        theirs = librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window="hann", center=True,
                              pad_mode="reflect").T
        assert ours.shape == theirs.shape == (1 + 3001 // hop, n_fft // 2 + 1)
        np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_signals_shorter_than_n_fft_are_zero_padded_and_give_finite_values():
    ref = np.array([0.1, -0.2, 0.3, 0.05, -0.1])
    est = ref * 1.1
    m = audio_metrics(est, ref, SR)
    assert all(math.isfinite(m[k]) for k in ("snr_db", "si_sdr_db", "mrstft", "lsd_db"))
    assert m["mrstft"] > 0 and m["lsd_db"] > 0
    empty = audio_metrics(np.zeros(0), np.zeros(0), SR)
    assert empty["snr_db"] == math.inf and empty["mrstft"] == 0.0 and empty["length"] == 0


def test_float32_inputs_are_measured_in_float64():
    ref = _tone(4000).astype(np.float32)
    est = ref + np.float32(1e-4)
    assert audio_metrics(est, ref, SR)["snr_db"] == pytest.approx(snr_db(est.astype(np.float64), ref), abs=1e-9)


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"10 vs 12 samples"):
        audio_metrics(np.zeros(10), np.zeros(12), SR)


def test_two_dimensional_input_is_rejected():
    with pytest.raises(ValueError, match=r"est must be 1-D audio, got shape \(1, 10\)"):
        audio_metrics(np.zeros((1, 10)), np.zeros(10), SR)
    with pytest.raises(ValueError, match=r"ref must be 1-D"):
        snr_db(np.zeros(10), np.zeros((10, 1)))


def test_nan_or_inf_names_the_offending_input():
    bad = np.zeros(10)
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"^est contains NaN/Inf"):
        audio_metrics(bad, np.zeros(10), SR)
    bad[3] = np.inf
    with pytest.raises(ValueError, match=r"^ref contains NaN/Inf"):
        si_sdr_db(np.zeros(10), bad)
