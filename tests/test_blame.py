"""First-divergence blame: an error planted in one MLX module fails the check; the shipped path's first line names
the shipped block that holds the module, and the layer-by-layer line names exactly the module. A NaN is named where
it first appears; a shape mismatch or a metric that cannot be computed is a failing tap with a blame line."""

import re

import pytest

from rvc_mlx.testing.harness import _mlx_submodule

PLANTS = {
    # tap path -> (parameters scaled by 1.001 (scales the module's output by 1.001), the shipped block holding it:
    # the shipped path's first divergent tap is that block, or the first shipped tap inside it to read the value)
    "unet.encoder.layers.1.conv.0.conv.4": (("weight", "bias"), "unet.encoder.layers.1.conv.0"),  # a fused BN
    "unet.decoder.layers.2.conv1.0": (("weight",), "unet.decoder.layers.2"),  # a ConvTranspose2d, fused with BN
    "fc.1": (("weight", "bias"), "fc.1"),  # the Linear after the GRU: called as it is on both paths
}


@pytest.fixture
def rmvpe_mlx(parity):
    comp = parity.component("rmvpe")
    return comp.mlx_module(comp.mlx(parity.weights(comp)))


@pytest.mark.parity
@pytest.mark.parametrize("path", sorted(PLANTS))
def test_planted_error_fails_parity_and_is_blamed_on_exactly_that_module(parity, rmvpe_mlx, path):
    params, block = PLANTS[path]
    module = _mlx_submodule(rmvpe_mlx, path, "model")
    saved = {p: module[p] for p in params}
    try:
        module.update({p: v * 1.001 for p, v in saved.items()})
        result = parity.check("rmvpe", "speech", record=False)  # (kept out of the parity report)
    finally:
        module.update(saved)
    assert not result.passed
    assert result.blame.name.startswith(block) and result.layers.blame.name == path, result.failure_message()
    first, where, second = result.failure_message().splitlines()[:3]
    assert first == result.blame_line() and f"first divergence at {block}" in first
    assert "would need tolerance >=" in first
    assert where.startswith("  worst element at index (") and ": MLX " in where and ", reference " in where, where
    assert second.startswith("layer-by-layer (") and f"first divergence at {path} (" in second
    # every failing tap of both runs is listed, in execution order, not only the first, each with its worst element
    lines = result.failure_message().splitlines()
    listed = [ln for ln in lines if re.match(r"^  \S", ln) and not ln.startswith("  worst element")]
    assert len(listed) == len(result.failing) + len(result.layers.failing) > 2
    assert sum(ln.startswith("    worst element at index (") for ln in lines) == len(listed)
    for res in (result, result.layers):
        orders = [t.order for t in res.failing]
        assert orders == sorted(orders) and all(t.passed for t in res.taps if t.order < res.blame.order)


@pytest.mark.parity
def test_unplanted_model_passes_after_the_plants_are_removed(parity):
    result = parity.check("rmvpe", "speech", record=False)
    assert result.passed, result.failure_message()


@pytest.mark.parity
def test_a_nan_planted_in_one_synthesizer_layer_is_named_as_the_first_non_finite_tap(parity):
    import mlx.core as mx
    import numpy as np

    comp = parity.component("synth")
    synth = comp.mlx_module(comp.mlx(parity.weights(comp, "v2-40k-nof0")))
    conv = _mlx_submodule(synth, "flow.flows.6.post", "model")  # the last-but-one flow layer runs first
    saved = conv["weight"]
    w = np.array(saved)
    w[3, 0, 5] = np.nan
    try:
        conv.update({"weight": mx.array(w)})
        result = parity.check("synth", "v2-40k-nof0", record=False)
    finally:
        conv.update({"weight": saved})
    assert not result.passed and result.first_nonfinite.name == "flow.flows.6", result.failure_message()
    first, where, second = result.failure_message().splitlines()[:3]
    assert where.startswith("  first non-finite at index (") and "MLX nan" in where, where
    assert second.startswith("layer-by-layer (") and "first non-finite value at flow.flows.6 (" in second, second
    assert re.search(r"first non-finite value at flow\.flows\.6 \(ResidualCouplingLayer\): [1-9]\d* of \d+ MLX "
                     r"values are NaN or Inf \(the reference's are finite\)$", first), first


@pytest.mark.slow  # two whole-pipeline runs: in make parity (make test keeps the NaN and message tests)
@pytest.mark.parity
def test_a_pipeline_padding_bug_is_blamed_on_the_first_tap_whose_shape_differs(parity, monkeypatch):
    from rvc_common.config import PipelineConfig

    # the reflect padding lengthened from 1 s to 1.5 s (the trimming still takes 1 s): the output length changes
    monkeypatch.setattr(PipelineConfig, "t_pad", property(lambda cfg: round(cfg.sample_rate * cfg.x_pad * 1.5)))
    result = parity.check("pipeline", "speech-v2-40k-f0", record=False)  # must not raise in the audio metrics
    assert not result.passed
    shapes = [t for t in result.taps if t.status == "shape"]
    assert shapes and result.blame is shapes[0], result.failure_message()
    assert shapes[0].name == "pipeline.padded", result.failure_message()  # the step that pads is tapped
    first = result.failure_message().splitlines()[0]
    assert f"first divergence at {shapes[0].name} (" in first and ": MLX shape (" in first, first
    assert any("pipeline domain metrics could not be computed (ValueError" in p for p in result.problems)


@pytest.mark.slow  # a whole-pipeline run: in make parity
@pytest.mark.parity
def test_an_inverted_protect_mask_is_blamed_on_the_protected_features(parity, monkeypatch):
    import rvc_mlx.pipeline as pipeline

    weights = pipeline.protect_weights
    monkeypatch.setattr(pipeline, "protect_weights", lambda pitchf, protect: 1 - weights(pitchf, protect))
    result = parity.check("pipeline", "speech-v2-40k-f0", record=False)
    assert not result.passed
    # the features and retrieval before the mix pass; the mix is the first step that diverges
    passed = {t.name for t in result.taps if t.status == "pass"}
    assert {"pipeline.padded", "pipeline.f0", "pipeline.features", "pipeline.retrieved"} <= passed, \
        result.failure_message()
    assert result.blame.name == "pipeline.protected", result.failure_message()
    first = result.failure_message().splitlines()[0]
    assert "first divergence at pipeline.protected (" in first, result.failure_message()


def _result(local_passed: bool):
    from rvc_mlx.testing.compare import CaseResult, TapResult

    ok = {"passed": True, "mlx": {"max_rel": 1e-7}, "torch": {"max_rel": 1e-7}, "limits": {"max_rel": 1e-6}}
    bad = {"passed": False, "mlx": {"max_rel": 3e-5}, "torch": {"max_rel": 1e-7}, "limits": {"max_rel": 1e-6}}
    taps = [TapResult("enc.0", "Conv1d", "tensor", 0, (1, 4), local=ok),
            TapResult("enc.1", "Conv1d", "tensor", 1, (1, 4), status="fail", local=ok if local_passed else bad),
            TapResult("enc.2", "Conv1d", "tensor", 2, (1, 4), status="fail", local=ok)]
    for t in taps[1:]:
        t.detail = "max_rel 3e-5 > tolerance 1e-6"
        t.status = "missing"  # described by its detail alone (no policy object needed here)
    return CaseResult("toy", "case", "golden", taps)


def test_a_first_divergence_whose_module_passes_teacher_forced_is_blamed_on_untapped_code_before_it():
    message = _result(local_passed=True).failure_message()
    assert message.splitlines()[0].endswith("teacher-forced it passes: untapped code between enc.0 and enc.1")
    assert "  enc.2 (Conv1d): max_rel 3e-5 > tolerance 1e-6; teacher-forced it passes (inherited error)" in message
    assert "teacher-forced on the shipped path: 3 of 3 modules pass on the oracle's inputs" in message


def test_the_failure_message_lists_the_teacher_forced_verdict_of_the_modules_that_fail_locally():
    message = _result(local_passed=False).failure_message()
    assert "teacher-forced it fails too (a local bug: max_rel 3e-05 (limit 1e-06, torch-fp32 1e-07))" in message
    assert "teacher-forced on the shipped path: 2 of 3 modules pass on the oracle's inputs, failing locally:" \
        in message
    assert "\n  enc.1: max_rel 3e-05 (limit 1e-06, torch-fp32 1e-07)" in message


def test_a_failing_tap_says_where_worst_element_and_share_and_a_pitch_tap_its_first_frames():
    import numpy as np

    from rvc_mlx.testing.compare import compare_case
    from rvc_mlx.testing.golden import CaseData, TapInfo
    from rvc_mlx.testing.tolerances import Policy

    ref = {"x": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
           "f0": np.array([0, 100, 110, 120, 0, 130], np.float32)}
    taps = {"x": TapInfo("x", (2, 3, 4), 0, "Linear", torch32={"max_rel": 1e-7, "rmse_rel": 1e-7}),
            "f0": TapInfo("f0", (6,), 1, "tap", kind="f0")}
    case = CaseData("toy", "a", ref, taps, {}, {})
    mlx = {"x": ref["x"].copy(), "f0": np.array([0, 100, 0, 125, 0, 130], np.float32)}
    mlx["x"][1, 2, 3] += 0.01
    mlx["x"][0, 1, 0] += 0.001
    result = compare_case(case, mlx, Policy())
    lines = result.failure_message().splitlines()
    assert lines[0].startswith("toy/a (") and "first divergence at x (Linear)" in lines[0]
    assert lines[1] == ("  worst element at index (1, 2, 3): MLX 1.01, reference 1, difference 0.01; 2 of 24 elements "
                        "(8.33%) over the max_rel limit"), lines[1]
    f0 = next(t for t in result.taps if t.name == "f0")
    assert f0.where == ("2 frames disagree, first: 2 (MLX 0.00 Hz, reference 110.00 Hz), 3 (MLX 125.00 Hz, "
                        "reference 120.00 Hz)"), f0.where
    assert f"    {f0.where}" in lines
