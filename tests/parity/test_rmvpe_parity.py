"""RMVPE: the MLX port matches the golden float64 oracle at every tap, and teacher forcing localises."""

import pytest

from rvc_mlx.testing.components import case_names

CASES = case_names("rmvpe")


@pytest.mark.parity
@pytest.mark.parametrize("case", CASES)
def test_rmvpe_every_tap_matches_golden_within_policy(parity, case):
    result = parity.check("rmvpe", case)
    assert result.passed, result.failure_message()


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_rmvpe_every_module_passes_teacher_forced_against_live_oracle(parity, case):
    result = parity.check("rmvpe", case, live=True, teacher=True)
    assert result.passed, result.failure_message()
    local = [t for t in result.taps if t.local is not None]
    assert local, "teacher forcing judged no module"
    bad = [f"{t.name}: {t.local}" for t in local if not t.local["passed"]]
    assert not bad, "teacher-forced local errors out of tolerance:\n" + "\n".join(bad)


CHECKED_TYPES = {"Conv2d", "ConvTranspose2d", "BatchNorm2d", "ConvBlockRes", "ResEncoderBlock", "ResDecoderBlock",
                 "Encoder", "Intermediate", "Decoder", "DeepUnet", "GRU", "BiGRU", "Linear", "Sigmoid", "E2E"}


@pytest.mark.parity
def test_rmvpe_golden_covers_every_module_and_the_mel_salience_f0_taps(parity):
    from reference_torch.rmvpe import E2E

    golden = parity.store.load("rmvpe", "speech")
    expected = {path or "model" for path, m in E2E().named_modules() if type(m).__name__ in CHECKED_TYPES}
    covered = {name.split(":")[0] for name in golden.taps}
    assert not expected - covered, f"modules without a golden tap: {sorted(expected - covered)[:10]}"
    assert {"rmvpe.mel", "rmvpe.salience", "rmvpe.f0"} <= set(golden.taps)
    assert len(expected) > 300
