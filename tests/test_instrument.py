"""Instrumentation belongs to the package: model code imports only rvc_common.instrument (never the harness), a
recording never changes what a model computes, and layer-by-layer mode is explicit."""

import ast
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from rvc_common import instrument
from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_nothing_outside_the_harness_and_the_tests_imports_rvc_mlx_testing():
    sources = [p for p in REPO.rglob("*.py") if not {".venv", "tests", "build"} & set(p.relative_to(REPO).parts)
               and "rvc_mlx/testing" not in p.relative_to(REPO).as_posix()]
    assert any(p.name == "rmvpe.py" for p in sources) and any("reference_torch" in str(p) for p in sources)
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imports(p) if n.startswith("rvc_mlx.testing"))
                 for p in sources}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_taps_splits_and_implementation_reports_cost_nothing_without_an_observer():
    assert not instrument.recording() and not instrument.layer_by_layer()
    x = mx.ones((2,))
    assert instrument.tap("a.b", x) is x
    assert instrument.output(nn.ReLU(), x) is x
    instrument.used("kernel nothing")  # no observer: dropped
    instrument.split("nothing", 3)
    with instrument.layers():
        assert instrument.layer_by_layer()
    assert not instrument.layer_by_layer()


class _Fused(nn.Module):
    """Computes its child's output without calling it (as a fused stage does) and reports it as the child's."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()

    def __call__(self, x):
        if instrument.layer_by_layer():
            return self.act(x) * 2
        instrument.used("fused relu")
        y = instrument.output(self.act, mx.maximum(x, 0))
        instrument.split("halves", 2)
        return y * 2


def test_a_recorder_observes_the_path_it_finds_and_runs_layer_by_layer_only_when_asked():
    m = _Fused()
    x = mx.array([-1.0, 2.0])
    layouts = LayoutMap((LayoutRule("*", "same"),))
    with MLXRecorder(m, layouts) as rec:
        assert not instrument.layer_by_layer() and instrument.recording()
        m(x)
    assert rec.mode == "shipped" and set(rec.records) == {"act", "model"}
    np.testing.assert_array_equal(rec.records["act"].value, [0.0, 2.0])
    assert rec.records["act"].module_type == "ReLU"
    assert rec.calls["act"].own == ("fused relu",) and rec.calls["act"].parent == "model"
    assert rec.splits == {"halves": 2} and rec.implementations() == {"fused relu", "split: halves"}
    with MLXRecorder(m, layouts, layer_by_layer=True) as rec:
        assert instrument.layer_by_layer()
        m(x)
    assert rec.mode == "layer-by-layer" and not rec.implementations() and not rec.splits
    assert not instrument.layer_by_layer() and not instrument.recording()


@pytest.mark.parametrize("component, case", [("rmvpe", "speech"), ("fcpe", "speech-taps"), ("synth", "v2-40k-f0-all"),
                                             ("hubert", "speech")])
def test_recording_never_changes_what_a_model_computes(parity, component, case):
    """The shipped path with every tap recorded computes bit for bit what it computes unobserved."""
    comp = parity.component(component)
    spec = comp.spec.case(case)
    model = comp.mlx(parity.weights(comp, case))
    inputs, _ = comp.load_input(spec)
    with comp.constants(spec, model):
        plain = np.array(comp.run_mlx(model, inputs))
        with MLXRecorder(comp.mlx_module(model), comp.layouts, root=comp.root,
                         select=list(parity.store.load(component, case).taps)) as rec:
            observed = np.array(comp.run_mlx(model, inputs))
    np.testing.assert_array_equal(observed, plain)
    assert len(rec.records) > 20 and rec.implementations()
