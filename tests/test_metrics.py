"""Metrics: tensor error metrics and mir_eval-style pitch metrics give the textbook values."""

import math

import numpy as np
import pytest

from rvc_mlx.testing.metrics import hz_to_cents, pitch_metrics, tensor_metrics


def test_tensor_metrics_match_hand_computed_values():
    ref = np.array([1.0, -2.0, 4.0, 0.0])
    val = ref + np.array([0.0, 0.5, -1.0, 0.0])
    m = tensor_metrics(val, ref)
    assert m["max_abs"] == 1.0
    assert m["max_rel"] == pytest.approx(1.0 / 4.0)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0) / 4))
    assert m["rmse_rel"] == pytest.approx(m["rmse"] / math.sqrt(21 / 4))
    assert m["snr_db"] == pytest.approx(10 * math.log10(21 / 1.25))
    assert m["cosine"] == pytest.approx(np.dot(val, ref) / np.linalg.norm(val) / np.linalg.norm(ref))
    assert m["pearson"] == pytest.approx(np.corrcoef(val, ref)[0, 1])


def test_identical_tensors_have_zero_error_and_infinite_snr():
    a = np.linspace(-1, 1, 11)
    m = tensor_metrics(a, a)
    assert m["max_abs"] == 0 and m["rmse_rel"] == 0 and m["snr_db"] == math.inf and m["pearson"] == 1.0


def test_nan_where_the_reference_is_finite_is_a_total_failure():
    m = tensor_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert m["max_rel"] == math.inf and m["snr_db"] == -math.inf


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) vs reference \(3, 2\)"):
        tensor_metrics(np.zeros((2, 3)), np.zeros((3, 2)))


def test_pitch_metrics_cents_voicing_and_accuracy():
    ref = np.array([0.0, 100.0, 200.0, 400.0, 0.0, 300.0])
    est = ref * 2 ** (1 / 1200)  # +1 cent everywhere voiced
    est[5] = 0.0  # one voiced frame missed
    est[4] = 150.0  # one false alarm
    m = pitch_metrics(est, ref)
    assert m["voiced_both"] == 3
    assert m["cents_p50"] == pytest.approx(1.0) and m["cents_max"] == pytest.approx(1.0)
    assert m["voicing_agreement"] == pytest.approx(4 / 6)
    assert m["voicing_recall"] == pytest.approx(3 / 4)
    assert m["voicing_false_alarm"] == pytest.approx(1 / 2)
    assert m["raw_pitch_accuracy"] == pytest.approx(3 / 4)


def test_octave_errors_count_for_chroma_but_not_raw_pitch():
    ref = np.array([100.0, 200.0])
    m = pitch_metrics(ref * 2, ref)
    assert m["raw_pitch_accuracy"] == 0.0 and m["raw_chroma_accuracy"] == 1.0


def test_ignored_frames_are_left_out_of_every_pitch_metric():
    ref = np.array([100.0, 100.0, 100.0])
    est = np.array([100.0, 0.0, 100.0])
    m = pitch_metrics(est, ref, ignore=np.array([False, True, False]))
    assert m["voicing_agreement"] == 1.0 and m["ignored"] == 1 and m["frames"] == 2


def test_hz_to_cents_uses_mir_eval_reference_of_10_hz():
    np.testing.assert_allclose(hz_to_cents(np.array([10.0, 20.0, 0.0])), [0.0, 1200.0, 0.0])
