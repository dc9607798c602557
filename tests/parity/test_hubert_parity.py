"""HuBERT / ContentVec: the MLX port matches the golden float64 oracle, on the shipped path (attention in query
chunks where the case sets them) and layer by layer, with the kernels and on the pure-MLX path; teacher forcing
localises."""

import pytest

from rvc_mlx.testing.components import case_names, case_paths, load_specs

CASES = case_names("hubert")


@pytest.mark.parity
@pytest.mark.parametrize("case, path", case_paths("hubert"))
def test_hubert_every_tap_matches_golden_within_policy(parity, case, path):
    result = parity.check("hubert", case, path=path)
    assert result.passed, result.failure_message()


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_hubert_every_module_passes_teacher_forced_against_live_oracle(parity, case):
    result = parity.check("hubert", case, live=True, teacher=True)
    assert result.passed, result.failure_message()
    local = [t for t in result.layers.taps if t.local is not None]
    assert len(local) > 100, "teacher forcing judged too few modules"
    for res in (result, result.layers):
        bad = [f"{t.name}: {t.local}" for t in res.taps if t.local is not None and not t.local["passed"]]
        assert not bad, f"teacher-forced local errors out of tolerance ({res.path}):\n" + "\n".join(bad)


CHECKED_TYPES = {"Conv1d", "GroupNorm", "LayerNorm", "Linear", "GroupNormConvLayer", "NoLayerNormConvLayer",
                 "FeatureEncoder", "FeatureProjection", "SamePad", "PositionalConvEmbedding", "Attention",
                 "FeedForward", "EncoderLayer", "Encoder", "HubertModel"}


@pytest.mark.parity
@pytest.mark.parametrize("case", [c.name for c in load_specs()["hubert"].cases if c.store == "all"])
def test_hubert_golden_covers_every_module(parity, case):
    from reference_torch.hubert import HubertModel

    golden = parity.store.load("hubert", case)
    expected = {path or "model" for path, m in HubertModel().named_modules() if type(m).__name__ in CHECKED_TYPES}
    covered = {name.split(":")[0] for name in golden.taps}
    assert not expected - covered, f"modules without a golden tap: {sorted(expected - covered)[:10]}"
    assert "hubert.features" in golden.taps and "final_proj" in golden.taps
