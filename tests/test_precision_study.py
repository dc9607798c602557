"""The precision study's machinery: a layer forced to float16 is found as the worst, plans are searched with the
fewest layers and really keep them in float32, the committed plans meet their targets, the table and plan file
round-trip."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from rvc_mlx import precision
from rvc_mlx.precision import Plan
from rvc_mlx.testing import precision_report as pr, precision_study as ps

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


def test_the_pipeline_search_keeps_the_most_helpful_model_then_only_the_layers_it_needs():
    """The models' plans fail end to end; rmvpe whole in float32 helps most and suffices; then rmvpe goes back to
    its plan plus the shortest prefix of its ranking that still passes. Hubert and synth keep their own plans."""
    base = {"hubert": [], "rmvpe": ["fc.*"], "synth": ["dec.m_source"]}
    rankings = {"rmvpe": ["fc.0.gru", "a", "b", "c", "d"], "synth": ["x"], "hubert": ["y"]}
    asked, runs = [], []

    def measure(keeps):
        runs.append(keeps)
        r = keeps["rmvpe"]
        snr = 30 + (12 if r == ["*"] or {"a", "b"} <= set(r) else 0) + (3 if keeps["synth"] == ["*"] else 0)
        return snr >= 41, snr

    def ranking(part):
        asked.append(part)
        return rankings[part]

    keep, trials = ps.search_pipeline_plan(base, ranking, measure)
    assert keep == {"hubert": [], "rmvpe": ["fc.*", "a", "b"], "synth": ["dec.m_source"]}
    assert asked == ["rmvpe"]  # only the model that had to be kept whole is ranked
    assert trials == len(runs) == len({repr(sorted(r.items())) for r in runs})  # no plan run twice
    assert runs[0] == base and all("fc.0.gru" not in r["rmvpe"] for r in runs)  # covered by the plan's glob


def test_the_pipeline_search_says_when_even_float32_models_fail():
    keep, trials = ps.search_pipeline_plan({"a": [], "b": []}, lambda p: ["l"], lambda k: (False, 0.0))
    assert keep is None and trials == 4  # the plans; each model whole alone (one of them = the first greedy step)


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
    # the pipeline's entry: a keep list per model ("*" the whole model), merged into the file beside the others
    keeps = {"hubert": [], "rmvpe": ["*"], "synth": ["dec.ups.0"]}
    report["subjects"] = {"pipeline": {
        "component": "pipeline", "case": None, "domain_case": "speech-v2-40k-f0", "output": "pipeline.audio",
        "domain": "audio", "target": ps.TARGETS["audio"], "ranking": {},
        "plans": {"float16": {"keep": keeps, "trials": 5, "found": True, "models_plans_snr_db": 35.5}},
        "precisions": {"plan float16": {"keep": keeps, "domain": {"snr_db": 42.0, "mrstft": 0.02}, "meets": True,
                                        "seconds": 1.0, "peak_mib": 1.0, "taps": []}}}}
    assert "0/all/1" in pr.text_table(report) and "rmvpe: all (the model in float32)" in pr.to_html(report)
    path.write_text(pr._merge_plans(path, report))
    assert precision.load_plan("rmvpe", "float16", path) == Plan("float16", ("x.y",))  # kept
    assert precision.pipeline_plan("rmvpe", "float16", path) == Plan("float16", ("*",))
    assert precision.pipeline_plan("synth", "float16", path) == Plan("float16", ("dec.ups.0",))
    assert precision.pipeline_plan("fcpe", "float16", path) == Plan("float16")  # not in the entry: its own
    assert ps.loaded_pipeline_plans(path)["float16"]["hubert"] == Plan("float16")
    assert "pipeline" not in ps.loaded_plans(path)


def test_a_voicing_decision_within_the_dtypes_rounding_of_the_threshold_is_not_judged(study):
    # RMVPE's speech oracle has one frame whose peak salience is 6e-6 below the 0.03 threshold: storing that value
    # alone in float16 may flip it (it did on AVX-512, not on AVX2), so a float16 plan is not judged on it
    from rvc_common.config import RMVPE as CFG

    comp = study.parity.component("rmvpe")
    ref = study.parity.reference(comp, "speech")
    sal = ref.value("rmvpe.salience").astype(np.float64)
    peak = sal.max(axis=1)
    policy = study.parity.policy
    float32 = comp.pitch_ignore(ref, policy)["rmvpe.f0"]
    half = comp.pitch_ignore(ref, policy, ps.UNIT_ROUNDOFF["float16"])["rmvpe.f0"]
    close = np.abs(peak - CFG.threshold) <= ps.UNIT_ROUNDOFF["float16"] * np.abs(sal).max()
    assert close.sum() == 1 and not float32[close].any()  # float32 judges it
    assert half[close].all() and half.sum() == close.sum()  # float16 leaves out that frame, and only it
    assert (comp.pitch_ignore(ref, policy, ps.UNIT_ROUNDOFF["bfloat16"])["rmvpe.f0"] >= half).all()


def test_every_subject_has_a_committed_plan_per_reduced_dtype():
    data = tomllib.loads(precision.PLAN_FILE.read_text())
    for subj in ps.SUBJECTS:
        for dtype in precision.REDUCED:
            assert dtype in data.get(subj.key, {}), (
                f"golden/precision.toml has no {subj.key} {dtype} plan (no plan met the target, or the study "
                "was not run): run `make precision`")


def _plan_params():
    """Every committed plan: each model's, and the pipeline's (its models with the plans of its entry)."""
    out = []
    for subj in ps.SUBJECTS:
        for dtype in precision.REDUCED:
            marks = () if subj.key in QUICK else pytest.mark.slow
            out.append(pytest.param(subj.key, dtype, id=f"{subj.key}-{dtype}", marks=marks))
    return out


@pytest.mark.parametrize("key, dtype", _plan_params())
def test_committed_plan_meets_its_target(study, key, dtype):
    subj = ps.subject(key)
    if key == "pipeline":  # ~150 s each: the synthesizer's half-precision convs on MLX's CPU backend
        plan, parts = Plan(dtype), ps.loaded_pipeline_plans()[dtype]
    else:
        plan, parts = precision.load_plan(key, dtype), None
    run = study.domain_run(subj, plan, parts=parts)
    assert run.meets, f"{key} {dtype} plan {list(plan.keep)}: {ps.TARGETS[subj.domain]} fails: " + ", ".join(
        f"{k} {v:.4g}" for k, v in run.domain.items() if isinstance(v, float) and np.isfinite(v))
