"""First-divergence blame: an error planted in one MLX module fails the check; the shipped path's first line names
the shipped block that holds the module, and the layer-by-layer line names exactly the module."""

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
    first, second = result.failure_message().splitlines()[:2]
    assert first == result.blame_line() and f"first divergence at {block}" in first
    assert "would need tolerance >=" in first
    assert second.startswith("layer-by-layer (") and f"first divergence at {path} (" in second
    # every failing tap of both runs is listed, in execution order, not only the first
    msg = result.failure_message()
    assert msg.count("\n  ") == len(result.failing) + len(result.layers.failing) > 2
    for res in (result, result.layers):
        orders = [t.order for t in res.failing]
        assert orders == sorted(orders) and all(t.passed for t in res.taps if t.order < res.blame.order)


@pytest.mark.parity
def test_unplanted_model_passes_after_the_plants_are_removed(parity):
    result = parity.check("rmvpe", "speech", record=False)
    assert result.passed, result.failure_message()
