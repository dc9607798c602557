"""Synthesizer: every variant's MLX port matches the golden float64 oracle (injected noise), on the shipped path
(fused upsampling, fused and chunked resblock stages) at its taps and layer by layer at every tap, with the kernels
and on the pure-MLX path."""

import pytest

from rvc_mlx.testing.components import case_paths


@pytest.mark.parity
@pytest.mark.parametrize("case, path", case_paths("synth"))
def test_synth_every_tap_matches_golden_within_policy(parity, case, path):
    result = parity.check("synth", case, path=path)
    assert result.passed, result.failure_message()
    audio = next(t for t in result.taps if t.name == "synth.audio")
    assert audio.mlx["snr_db"] >= 60.0, audio.mlx


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", ["v2-40k-f0-all", "v2-40k-nof0"])
def test_synth_every_module_passes_teacher_forced_against_live_oracle(parity, case):
    result = parity.check("synth", case, live=True, teacher=True)
    assert result.passed, result.failure_message()
    for res in (result, result.layers):
        bad = [f"{t.name}: {t.local}" for t in res.taps if t.local is not None and not t.local["passed"]]
        assert not bad, f"teacher-forced local errors out of tolerance ({res.path}):\n" + "\n".join(bad)
