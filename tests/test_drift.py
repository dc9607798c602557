"""Drift against the last accepted run: a change that moves one layer's MLX error, even within tolerance, is listed
first under "changes since baseline" and fails `--fail-on-drift 2`; noise and unchanged runs are not drift."""

import json

import pytest

from rvc_mlx.testing import drift, report
from rvc_mlx.testing.harness import _mlx_submodule


def _report(results, parity):
    return report.build([r for res in results for r in (res, res.layers) if r is not None], parity.policy)


@pytest.mark.slow  # three RMVPE runs: in make parity, whose drift check it proves
@pytest.mark.parity
def test_a_layer_whose_error_triples_within_tolerance_is_listed_first_and_fails_drift_of_2(parity, tmp_path):
    comp = parity.component("rmvpe")
    rmvpe = comp.mlx_module(comp.mlx(parity.weights(comp)))
    clean = parity.check("rmvpe", "speech", record=False)
    baseline = _report([clean], parity)
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    assert drift.compare(_report([parity.check("rmvpe", "speech", record=False)], parity),
                         drift.load_baseline(tmp_path / "baseline.json"))["grown"] == []  # a rerun: no drift
    torch32 = parity.store.load("rmvpe", "speech").taps["fc.1"].torch32["rmse_rel"]
    layer = _mlx_submodule(rmvpe, "fc.1", "model")
    saved = {p: layer[p] for p in ("weight", "bias")}
    try:  # a relative perturbation of 1.5x the layer's torch float32 error: within tolerance, ~3x MLX's error
        layer.update({p: v * (1 + 1.5 * torch32) for p, v in saved.items()})
        planted = parity.check("rmvpe", "speech", record=False)
    finally:
        layer.update(saved)
    assert planted.passed, planted.failure_message()
    section = drift.compare(_report([planted], parity), baseline)
    first = section["grown"][0]
    assert first["tap"] == "fc.1" and first["ratio"] > 2, section["grown"][:3]
    assert section["cases_compared"] == 2 and section["environment"] == []
    moves = drift.exceeding(report.case_json(planted), baseline, 2.0)
    assert [m.tap for m in moves][:1] == ["fc.1"] and "fc.1 rmse_rel" in moves[0].line()
    page = drift.to_html(section)
    assert page.index("fc.1") < page.index("</table>") and "whose MLX error grew by more than 1.5x" in page


def _toy(errors, limit=1e-5, env=None):
    taps = [{"name": n, "metrics": {"max_rel": e, "rmse_rel": e}, "tolerance": {"max_rel": limit, "rmse_rel": limit}}
            for n, e in errors.items()]
    case = {"component": "toy", "case": "c", "path": "shipped", "execution": "pure MLX", "taps": taps}
    return {"components": {"toy": {"cases": [case]}}, "environment": env or {"cpu": "A"}, "benchmarks": []}


def test_noise_below_a_tenth_of_the_limit_is_not_drift_and_moves_are_sorted_by_growth():
    old = _toy({"a": 1e-7, "b": 2e-6, "c": 4e-6, "d": 3e-6})
    new = _toy({"a": 5e-7, "b": 7e-6, "c": 1.5e-6, "d": 3.5e-6}, env={"cpu": "B"})
    section = drift.compare(new, old)
    assert [(m["tap"], round(m["ratio"], 2)) for m in section["grown"]] == [("b", 3.5)]  # a: noise; d: 1.17x
    assert [(m["tap"], round(m["ratio"], 3)) for m in section["shrunk"]] == [("c", 0.375)]
    assert section["environment"] == ["cpu: A -> B"]
    assert "The baseline ran in another environment: cpu: A -&gt; B" in drift.to_html(section)
    unchanged = drift.compare(old, old)
    assert "Unchanged: no tap's MLX error moved by more than 1.5x (1 cases compared)" in drift.to_html(unchanged)
    assert "No baseline" in drift.to_html(None)


def test_an_unreadable_baseline_is_one_line_naming_the_fix(tmp_path):
    bad = tmp_path / "baseline.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"baseline.json: not a readable parity report .*make baseline"):
        drift.load_baseline(bad)
    assert drift.load_baseline(tmp_path / "absent.json") is None


@pytest.mark.slow
def test_make_parity_with_a_baseline_reports_drift_and_fail_on_drift_fails_the_case(pytester, tmp_path):
    pytester.makepyfile("""
def test_case(parity):
    assert parity.check("rmvpe", "harmonic").passed
""")
    first = tmp_path / "parity.json"
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--report", str(first), "-q")
    assert res.ret == 0, res.stdout.str()
    data = json.loads(first.read_text())
    assert data["drift"] is None  # no baseline yet
    # the accepted run had a 10x smaller error at one tap: now it reads as a 10x growth
    case = data["components"]["rmvpe"]["cases"][0]
    tap = max((t for t in case["taps"] if t["tolerance"]), key=lambda t: t["metrics"]["rmse_rel"]
              / t["tolerance"]["rmse_rel"])  # the tap nearest its limit: well above the noise floor
    tap["metrics"] = {m: v / 10 if m in drift.METRICS else v for m, v in tap["metrics"].items()}
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(data))
    second = tmp_path / "second.json"
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--report", str(second), "--baseline",
                                        str(baseline), "--fail-on-drift", "2", "-q")
    assert res.ret == 1
    res.stdout.fnmatch_lines(["*taps' MLX error grew by more than 2x since the baseline*",
                              f"*{tap['name']} *10.00x*"])
    grown = json.loads(second.read_text())["drift"]["grown"]
    assert grown[0]["tap"] == tap["name"] and round(grown[0]["ratio"], 2) == 10
    assert "Changes since baseline" in second.with_suffix(".html").read_text()
