"""The precision study's machinery: a layer forced to float16 is found as the worst, plans are searched with the
fewest layers and really keep them in float32, the committed plans meet their targets, the table and plan file
round-trip."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from rvc_mlx import precision
from rvc_mlx.precision import Plan
from rvc_mlx.testing import precision_report as pr
from rvc_mlx.testing import precision_study as ps

# subjects whose committed plans are run in `make test` (the shortest domain cases); the others in `make parity`
QUICK = ("hubert", "rmvpe", "fcpe")


@pytest.fixture(scope="module")
def study():
    return ps.Study(timing_rounds=1)


def test_search_finds_the_fewest_layers_when_the_ranking_is_imperfect():
    needed = {"b", "d"}
    runs = []

    def passes(keep):
        runs.append(list(keep))
        return needed <= set(keep)

    keep, trials = ps.search_plan([["a", "b", "c", "d", "e"], ["d", "b", "a", "c", "e"]], passes)
    assert sorted(keep) == ["b", "d"]
    assert trials == len({frozenset(r) for r in runs})  # every distinct plan counted once


def test_search_says_when_no_plan_meets_the_target():
    assert ps.search_plan([["a", "b"]], lambda keep: False) == (None, 2)
    assert ps.bisect_plan(["a", "b"], lambda keep: True) == ([], 1)


def test_bisection_needs_log_many_runs():
    ranking = [f"l{i}" for i in range(64)]
    prefix, trials = ps.bisect_plan(ranking, lambda keep: len(keep) >= 37)
    assert prefix == ranking[:37] and trials <= 2 + 6


def test_a_compacted_plan_selects_exactly_the_same_layers():
    layers = [f"encoder.layers.{i}.{n}" for i in range(12) for n in ("layer_norm", "attention.q_proj")] + ["proj"]
    keep = [f"encoder.layers.{i}.layer_norm" for i in range(12)] + ["encoder.layers.3.attention.q_proj", "proj"]
    short = ps.compact(keep, layers)
    assert short == ["encoder.layers.*.layer_norm", "encoder.layers.3.attention.q_proj", "proj"]
    assert {c for c in layers if precision.matches(c, short)} == set(keep)


def test_a_layer_forced_to_float16_is_the_worst_layer(study):
    """In a float32 CREPE (tiny) with one mid-network conv in float16, that conv adds by far the largest error
    by itself, and the per-tap errors first jump at it."""
    subj = ps.subject("crepe-tiny")
    forced = "conv4"
    plan = Plan("float32", layers={forced: "float16"})
    comp = study.parity.component(subj.component)
    ref = study.parity.reference(comp, subj.case, live=True, keep_inputs=True)
    local = study.local_errors(subj, plan, ref, every=True)
    assert not any(np.isnan(v["rmse_rel"]) for v in local.values())  # every CREPE layer has its own tap
    ranked = sorted(local, key=lambda n: -local[n]["rmse_rel"])
    assert ranked[0] == forced, ranked[:3]
    assert local[forced]["rmse_rel"] > 30 * local[ranked[1]]["rmse_rel"]
    taps = study.tap_errors(subj, plan, ref)
    first = next(t for t in taps if t["rmse_rel"] > 1e-4)
    assert first["name"] == forced


def test_a_plan_really_keeps_its_layers_in_float32(study):
    subj = ps.subject("rmvpe")
    kept = ("unet.encoder.layers.0", "fc")
    model = study.build(subj, subj.case, Plan("float16", kept))
    root = model.model
    dtypes = precision.module_dtypes(root, precision.plan_of(root))
    modules = dict(root.named_modules())
    for path, dtype in dtypes.items():
        in_plan = any(path == k or path.startswith(k + ".") for k in kept)
        want = "float32" if in_plan or dtype == "float32" else "float16"
        assert dtype == want, path
        for key in precision.own_arrays(modules[path]):
            assert modules[path][key].dtype == precision.DTYPES[want], (path, key)
    assert sum(d == "float32" for d in dtypes.values()) < len(dtypes)


def test_a_layer_reduced_for_its_damage_run_is_restored_exactly(study):
    subj = ps.subject("crepe-tiny")
    root = study.build(subj, subj.case, Plan("float32")).model
    layer = dict(root.named_modules())["classifier"]
    before = (type(layer), dict(layer.__dict__), {k: layer[k] for k in precision.own_arrays(layer)})
    x = np.random.default_rng(0).standard_normal((3, layer.weight.shape[1])).astype(np.float32)
    import mlx.core as mx

    y32 = np.array(layer(mx.array(x)))
    with ps._reduced(layer, "float16"):
        assert layer.weight.dtype == mx.float16 and layer(mx.array(x)).dtype == mx.float16
    assert type(layer) is before[0] and layer.__dict__ == before[1]
    assert all(layer[k] is v for k, v in before[2].items())
    np.testing.assert_array_equal(np.array(layer(mx.array(x))), y32)


def test_the_report_table_and_plan_file_round_trip(tmp_path):
    taps = [{"name": "a", "order": 0, "type": "Conv", "max_rel": 1e-3, "rmse_rel": 1e-3, "snr_db": 60.0}]
    pitch = {"cents_p99": 1.0, "voicing_agreement": 1.0}
    runs = {name: {"keep": ["x.y"] if name.startswith("plan") else [], "domain": pitch, "meets": True,
                   "seconds": 0.5, "peak_mib": 10.0, "taps": taps} for name in ps.PRECISIONS}
    runs.pop("plan bfloat16")
    report = {"environment": {"cpu": "test"}, "targets": ps.TARGETS, "subjects": {"rmvpe": {
        "component": "rmvpe", "case": "speech", "domain_case": "speech", "output": "rmvpe.f0", "domain": "pitch",
        "target": ps.TARGETS["pitch"], "ranking": {"float16": [{"name": "x.y", "damage": 1e-3, **taps[0]}]},
        "plans": {"float16": {"keep": ["x.y"], "trials": 3, "found": True},
                  "bfloat16": {"keep": None, "trials": 2, "found": False}},
        "precisions": runs}}}
    table = pr.text_table(report)
    assert "plan bfloat16" in table and "no plan meets the target" in table
    assert "p99 1.00 c" in table
    html = pr.to_html(report)
    assert "x.y" in html and "<img" in html
    path = tmp_path / "precision.toml"
    path.write_text(pr.plan_toml(report))
    data = tomllib.loads(path.read_text())
    assert data["rmvpe"]["float16"]["keep"] == ["x.y"] and "bfloat16" not in data["rmvpe"]
    assert precision.load_plan("rmvpe", "float16", path) == Plan("float16", ("x.y",))
    assert precision.load_plan("rmvpe", "bfloat16", path) == Plan("bfloat16")


def test_every_subject_has_a_committed_plan_per_reduced_dtype():
    data = tomllib.loads(precision.PLAN_FILE.read_text())
    for subj in ps.SUBJECTS:
        if subj.case is None:
            continue
        for dtype in precision.REDUCED:
            assert dtype in data.get(subj.key, {}), (
                f"golden/precision.toml has no {subj.key} {dtype} plan (no plan met the target, or the study "
                "was not run): run `make precision`")


def _plan_params():
    """Every model's committed plan (the pipeline's models each apply theirs; that composition is reported by
    `make precision`, and does not meet the end-to-end audio target: the NSF phase integrates F0 error)."""
    out = []
    for subj in ps.SUBJECTS:
        if subj.case is None:
            continue
        for dtype in precision.REDUCED:
            marks = () if subj.key in QUICK else pytest.mark.slow
            out.append(pytest.param(subj.key, dtype, id=f"{subj.key}-{dtype}", marks=marks))
    return out


@pytest.mark.parametrize("key, dtype", _plan_params())
def test_committed_plan_meets_its_target(study, key, dtype):
    subj = ps.subject(key)
    plan = precision.load_plan(key, dtype)
    run = study.domain_run(subj, plan)
    assert run.meets, f"{key} {dtype} plan {list(plan.keep)}: {ps.TARGETS[subj.domain]} fails: " + ", ".join(
        f"{k} {v:.4g}" for k, v in run.domain.items() if isinstance(v, float) and np.isfinite(v))
