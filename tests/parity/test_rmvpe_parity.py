"""RMVPE: the MLX port matches the golden float64 oracle, on the shipped path (fused conv blocks) at every tap it
computes and layer by layer at every tap, with the kernels and on the pure-MLX path; teacher forcing localises."""

import pytest

from rvc_mlx.testing.components import case_names, case_paths

CASES = case_names("rmvpe")


@pytest.mark.parity
@pytest.mark.parametrize("case, path", case_paths("rmvpe"))
def test_rmvpe_every_tap_matches_golden_within_policy(parity, case, path):
    result = parity.check("rmvpe", case, path=path)
    assert result.passed, result.failure_message()


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_rmvpe_every_module_passes_teacher_forced_against_live_oracle(parity, case):
    result = parity.check("rmvpe", case, live=True, teacher=True)
    assert result.passed, result.failure_message()
    for res in (result, result.layers):
        local = [t for t in res.taps if t.local is not None]
        assert local, f"teacher forcing judged no module on the {res.path} path"
        bad = [f"{t.name}: {t.local}" for t in local if not t.local["passed"]]
        assert not bad, f"teacher-forced local errors out of tolerance ({res.path}):\n" + "\n".join(bad)


CHECKED_TYPES = {"Conv2d", "ConvTranspose2d", "BatchNorm2d", "ConvBlockRes", "ResEncoderBlock", "ResDecoderBlock",
                 "Encoder", "Intermediate", "Decoder", "DeepUnet", "GRU", "BiGRU", "Linear", "Sigmoid", "E2E"}


@pytest.mark.parity
def test_rmvpe_golden_covers_every_module_and_the_mel_salience_f0_taps(parity):
    from reference_torch.rmvpe import E2E

    golden = parity.store.load("rmvpe", "speech")
    expected = {path or "model" for path, m in E2E().named_modules() if type(m).__name__ in CHECKED_TYPES}
    covered = {name.split(":")[0] for name in golden.taps}
    # a ConvBlockRes's first BN is checked through its ReLU's output (golden/cases.toml: the shipped path's tap),
    # and outside each layer's first block its second conv through that conv's BN, the next tap (the budget)
    def through_next(m: str) -> bool:
        block = m.rsplit(".", 2)[0]
        if m.endswith(".conv.1"):
            return m[:-1] + "2" in covered
        return m.endswith(".conv.3") and not block.endswith(".0") and m[:-1] + "4" in covered

    missing = {m for m in expected - covered if not through_next(m)}
    assert not missing, f"modules without a golden tap: {sorted(missing)[:10]}"
    assert {"rmvpe.mel", "rmvpe.salience", "rmvpe.f0"} <= set(golden.taps)
    assert len(expected) > 300
