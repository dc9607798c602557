"""First-divergence blame: an error planted in one MLX module fails the check and is blamed on exactly it."""

import pytest

from rvc_mlx.testing.harness import _mlx_submodule

PLANTS = {
    # tap path -> parameters scaled by 1.001 (scales the module's output by 1.001)
    "unet.encoder.layers.1.conv.0.conv.1": ("weight", "bias"),  # a BatchNorm deep in the encoder
    "unet.decoder.layers.2.conv1.0": ("weight",),  # a ConvTranspose2d
    "fc.1": ("weight", "bias"),  # the Linear after the GRU
}


@pytest.fixture
def rmvpe_mlx(parity):
    comp = parity.component("rmvpe")
    return comp.mlx_module(comp.mlx(parity.weights(comp)))


@pytest.mark.parity
@pytest.mark.parametrize("path", sorted(PLANTS))
def test_planted_error_fails_parity_and_is_blamed_on_exactly_that_module(parity, rmvpe_mlx, path):
    module = _mlx_submodule(rmvpe_mlx, path, "model")
    saved = {p: module[p] for p in PLANTS[path]}
    try:
        module.update({p: v * 1.001 for p, v in saved.items()})
        result = parity.check("rmvpe", "speech")
    finally:
        module.update(saved)
        parity.results.pop()  # keep the planted run out of the parity report
    assert not result.passed
    assert result.blame.name == path, result.failure_message()
    line = result.blame_line()
    assert "\n" not in line and f"first divergence at {path} (" in line
    assert "would need tolerance >=" in line
    # every failing tap is listed, in execution order, not only the first
    msg = result.failure_message()
    assert msg.count("\n  ") == len(result.failing) > 1
    orders = [t.order for t in result.failing]
    assert orders == sorted(orders) and all(t.passed for t in result.taps if t.order < result.blame.order)


@pytest.mark.parity
def test_unplanted_model_passes_after_the_plants_are_removed(parity):
    result = parity.check("rmvpe", "speech")
    assert result.passed, result.failure_message()
    parity.results.pop()
