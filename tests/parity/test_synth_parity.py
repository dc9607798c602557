"""Synthesizer: every variant's MLX port matches the golden float64 oracle (injected noise) at its taps."""

import pytest

from rvc_mlx.testing.components import case_names

CASES = case_names("synth")


@pytest.mark.parity
@pytest.mark.parametrize("case", CASES)
def test_synth_every_tap_matches_golden_within_policy(parity, case):
    result = parity.check("synth", case)
    assert result.passed, result.failure_message()
    audio = next(t for t in result.taps if t.name == "synth.audio")
    assert audio.mlx["snr_db"] >= 60.0, audio.mlx


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", ["v2-40k-f0-all", "v2-40k-nof0"])
def test_synth_every_module_passes_teacher_forced_against_live_oracle(parity, case):
    result = parity.check("synth", case, live=True, teacher=True)
    assert result.passed, result.failure_message()
    bad = [f"{t.name}: {t.local}" for t in result.taps if t.local is not None and not t.local["passed"]]
    assert not bad, "teacher-forced local errors out of tolerance:\n" + "\n".join(bad)
