"""Every golden case is still what the current PyTorch twin computes (stale goldens fail with the fix)."""

import numpy as np
import pytest

from rvc_mlx.testing.components import load_specs
from rvc_mlx.testing.golden import UNCHANGED_RTOL
from rvc_mlx.testing.harness import live_reference

# The float64 twin runs that cost `make test` most (CREPE-full over whole inputs: ~30 s and ~6 GB each; the
# pipeline over 3 s of padded speech: ~20 s) are checked by `make parity`; in `make test` the same twin code is
# checked fresh on full-*-blocks (the network), tiny-speech (the decoding) and the stereo pipeline case.
HEAVY = {"crepe/full-speech", "crepe/full-harmonic", "pipeline/speech-v2-40k-f0"}
CASES = [pytest.param(c.component, c.name, id=f"{c.component}/{c.name}",
                      marks=pytest.mark.slow if f"{c.component}/{c.name}" in HEAVY else ())
         for s in load_specs().values() for c in s.cases]


@pytest.mark.parity
@pytest.mark.parametrize("component, case", CASES)
def test_golden_is_reproduced_by_the_current_float64_twin(parity, component, case):
    if parity.regen:  # the old golden is being replaced by the same twin's output: nothing to check, and it costs
        pytest.skip("--regen-golden: the goldens are being regenerated from this twin")
    comp = parity.component(component)
    golden = parity.store.load(component, case)
    # goldens are made from the synthetic weights
    live = live_reference(comp, case, comp.weights(None, comp.spec.case(case)), with_fp32=False)
    assert list(live.taps) == list(golden.taps), "tap list changed: run `make golden`"
    stale = []
    for name in golden.taps:
        a, b = live.value(name).astype(np.float64), golden.value(name)
        scale = max(float(np.max(np.abs(b))), 1e-30)
        # the bound under which regeneration keeps a golden as unchanged (rvc_mlx/testing/golden.py)
        if a.shape != b.shape or np.max(np.abs(a - b)) > UNCHANGED_RTOL * scale:
            stale.append(name)
    assert not stale, f"golden {component}/{case} is stale at {len(stale)} taps (first: {stale[0]}): run `make golden`"
