"""Golden parity of every component, written once over golden/cases.toml (components x cases x paths).

The MLX port matches the float64 oracle at every tap its shipped path computes and, layer by layer, at every
golden tap, with the kernels and on the pure-MLX path, and meets its case's absolute requirements; teacher
forcing against the live oracle judges every module on exact inputs (`make parity`); each golden covers what its
component declares; and every golden is still what the current twin computes. What differs per component is data
beside its cases (`coverage`, `teacher`, `require`), each entry with its reason.
"""

import numpy as np
import pytest

from rvc_mlx.testing.asserts import assert_matches
from rvc_mlx.testing.components import case_paths, load_specs
from rvc_mlx.testing.golden import UNCHANGED_RTOL
from rvc_mlx.testing.harness import live_reference

SPECS = load_specs()

# every case on the kernel path; on the pure-MLX path the `test_pure_mlx` cases in `make test`, all in `make parity`
CASE_PATHS = [pytest.param(comp, *p.values, marks=p.marks, id=f"{comp}/{p.id}")
              for comp in SPECS for p in case_paths(comp)]
TEACHER = [pytest.param(comp, case, spec.teacher.min_local, id=f"{comp}/{case}")
           for comp, spec in SPECS.items() if spec.teacher for case in spec.teacher.cases]
COVERAGE = [pytest.param(comp, i, case, id=f"{comp}/{case}")
            for comp, spec in SPECS.items() for i, cov in enumerate(spec.coverage) for case in cov.cases]
# The float64 twin runs that cost `make test` most (CREPE-full over whole inputs: each takes tens of seconds and
# gigabytes; the pipeline over 3 s of padded speech) are checked fresh by `make parity`; in `make test` the same
# twin code is checked on full-*-blocks (the network), tiny-speech (the decoding) and the stereo pipeline case.
HEAVY = {"crepe/full-speech", "crepe/full-harmonic", "pipeline/speech-v2-40k-f0"}
FRESH = [pytest.param(c.component, c.name, id=f"{c.component}/{c.name}",
                      marks=pytest.mark.slow if f"{c.component}/{c.name}" in HEAVY else ())
         for s in SPECS.values() for c in s.cases]


@pytest.mark.parity
@pytest.mark.parametrize("component, case, path", CASE_PATHS)
def test_every_tap_matches_golden_within_policy(parity, component, case, path):
    assert_matches(parity.check(component, case, path=path))


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("component, case, min_local", TEACHER)
def test_every_module_passes_teacher_forced_against_live_oracle(parity, component, case, min_local):
    assert_matches(parity.check(component, case, live=True, teacher=True), teacher_min=min_local)


@pytest.mark.parity
@pytest.mark.parametrize("component, entry, case", COVERAGE)
def test_golden_covers_what_its_component_declares(parity, component, entry, case):
    gaps = parity.uncovered(component, SPECS[component].coverage[entry], case)
    if gaps:
        pytest.fail("\n".join(gaps + [f"(golden/cases.toml [[{component}.coverage]]: "
                                      f"{SPECS[component].coverage[entry].reason})"]), pytrace=False)


def test_every_component_declares_what_its_golden_covers():
    undeclared = [name for name, spec in SPECS.items() if not spec.coverage]
    assert not undeclared, f"golden/cases.toml: no [[<component>.coverage]] for {undeclared}"


@pytest.mark.parity
@pytest.mark.parametrize("component, case", FRESH)
def test_golden_is_reproduced_by_the_current_float64_twin(parity, component, case):
    if parity.regen:  # the old golden is being replaced by the same twin's output: nothing to check, and it costs
        pytest.skip("--regen-golden: the goldens are being regenerated from this twin")
    comp = parity.component(component)
    golden = parity.store.load(component, case)
    # goldens are made from the synthetic weights
    live = live_reference(comp, case, comp.weights(None, comp.spec.case(case)), with_fp32=False)
    if list(live.taps) != list(golden.taps):
        pytest.fail(f"golden {component}/{case}: the twin's tap list changed: run `make golden`", pytrace=False)
    stale = []
    for name in golden.taps:
        a, b = live.value(name).astype(np.float64), golden.value(name)
        scale = max(float(np.max(np.abs(b))), 1e-30)
        # the bound under which regeneration keeps a golden as unchanged (rvc_mlx/testing/golden.py)
        if a.shape != b.shape or np.max(np.abs(a - b)) > UNCHANGED_RTOL * scale:
            stale.append(name)
    if stale:
        pytest.fail(f"golden {component}/{case} is stale at {len(stale)} taps (first: {stale[0]}): run `make golden`",
                    pytrace=False)
