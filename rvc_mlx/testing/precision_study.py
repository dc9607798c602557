"""Precision study: what float16 and bfloat16 cost, tap by tap against the float64 oracle, which layers do the
damage (each layer teacher-forced in reduced precision on the oracle's inputs), and the fewest layers to keep in
float32 so that a component's domain metric meets its target (found by bisection over the worst-first ranking and
checked by running the plan). `make precision` runs it for every subject, prints and saves the table
(reports/precision.json + .html) and writes the plans to golden/precision.toml, which the MLX models apply
(`rvc_mlx.precision.load_plan`)."""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from rvc_common import instrument
from rvc_mlx import precision
from rvc_mlx.precision import Plan
from rvc_mlx.testing.harness import Parity, local_outputs, mlx_run
from rvc_mlx.testing.metrics import pitch_metrics, tensor_metrics

# The precisions each subject is run in: float32, the two reduced dtypes, and each one's plan.
PRECISIONS = ("float32", "float16", "bfloat16", "plan float16", "plan bfloat16")
# Domain targets (issue 20): pitch within 5 cents (p99) with the same voicing decisions; audio (and HuBERT's
# features, which the synthesizer reads) at 40 dB SNR vs the oracle.
PITCH_CENTS_P99, PITCH_VOICING, SNR_DB = 5.0, 0.99, 40.0
SEARCH_MARGIN = {"cents": 1.0, "snr_db": 1.0}  # a searched plan must beat the target by this much
# Half a unit in the last place: a pitch frame whose oracle decision value lies within this fraction of the decision
# tensor's largest value from the threshold (or a tie) can flip when that value alone is stored in the dtype, so
# its voicing is decided by rounding, not by the plan. Such frames are left out, as the golden policy leaves out
# those within float32's tolerance.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
TARGETS = {"pitch": f"cents_p99 <= {PITCH_CENTS_P99:g} and voicing_agreement >= {PITCH_VOICING:g}",
           "audio": f"snr_db >= {SNR_DB:g}", "features": f"snr_db >= {SNR_DB:g}"}


@dataclass(frozen=True)
class Subject:
    """One model (or the pipeline) of the study: its layer-analysis case (every tap, teacher forcing), the case
    its plan must meet the target on, and the tap that target reads."""

    key: str  # the plan's entry in golden/precision.toml
    component: str
    case: str | None  # None: no layer analysis (the pipeline: its models are analysed on their own)
    domain_case: str
    output: str
    domain: str  # pitch | audio | features
    probe: str = ""  # the analysis case's continuous output a layer's damage is measured on


SUBJECTS = (
    Subject("hubert", "hubert", "speech", "speech", "hubert.features", "features", "hubert.features"),
    Subject("rmvpe", "rmvpe", "speech", "speech", "rmvpe.f0", "pitch", "rmvpe.salience"),
    Subject("crepe", "crepe", "full-speech-blocks", "full-speech", "crepe.f0", "pitch", "crepe.probabilities"),
    Subject("crepe-tiny", "crepe", "tiny-speech-taps", "tiny-speech", "crepe.f0", "pitch", "crepe.probabilities"),
    Subject("fcpe", "fcpe", "speech-taps", "speech", "fcpe.f0", "pitch", "fcpe.latent"),
    Subject("synth", "synth", "v2-40k-f0-all", "v2-40k-f0-long", "synth.audio", "audio", "synth.audio"),
    Subject("pipeline", "pipeline", None, "speech-v2-40k-f0", "pipeline.audio", "audio"),
)
# timing: the median of up to `timing_rounds` runs, fewer once they have taken this long (half precision is slow
# on the CPU: CREPE full is the slowest run of its domain case)
TIMING_BUDGET_S = 20.0
# the models inside the pipeline subject, whose own plans it applies
PIPELINE_PARTS = ("hubert", "rmvpe", "synth")


def subject(key: str) -> Subject:
    for s in SUBJECTS:
        if s.key == key:
            return s
    raise KeyError(f"no precision subject {key!r}; choose from {', '.join(s.key for s in SUBJECTS)}")


# ----------------------------------------------------------------------------------------------- domain metrics
def domain_metrics(subj: Subject, value: np.ndarray, ref: np.ndarray, sample_rate: int | None = None,
                   ignore: np.ndarray | None = None) -> dict:
    """The subject's domain metrics of `value` against the oracle's `ref` (pitch: without the `ignore` frames)."""
    if subj.domain == "pitch":
        return pitch_metrics(value, ref, ignore)
    if subj.domain == "audio":
        from rvc_mlx.testing.audio_metrics import audio_metrics

        return audio_metrics(np.ravel(value).astype(np.float64), np.ravel(ref).astype(np.float64), sample_rate)
    return tensor_metrics(value, ref)


def meets(subj: Subject, metrics: dict, margin: bool = False) -> bool:
    """Whether `metrics` meet the subject's target; with `margin` (the plan search) by SEARCH_MARGIN more, so that
    a plan found on one CPU still meets the target where float32 rounds differently."""
    cents, snr = (PITCH_CENTS_P99 - SEARCH_MARGIN["cents"], SNR_DB + SEARCH_MARGIN["snr_db"]) if margin \
        else (PITCH_CENTS_P99, SNR_DB)
    if subj.domain == "pitch":
        return metrics["cents_p99"] <= cents and metrics["voicing_agreement"] >= PITCH_VOICING
    return metrics["snr_db"] >= snr


def bisect_plan(ranking: list[str], passes: Callable[[list[str]], bool]) -> tuple[list[str] | None, int]:
    """The shortest worst-first prefix of `ranking` whose plan passes (assuming that keeping more layers in
    float32 never hurts), by bisection; None when even the whole ranking fails. Returns (prefix, trials)."""
    trials = 1
    if passes([]):
        return [], trials
    trials += 1
    if not passes(ranking):
        return None, trials
    lo, hi = 0, len(ranking)  # fails with lo layers kept, passes with hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trials += 1
        if passes(ranking[:mid]):
            hi = mid
        else:
            lo = mid
    return ranking[:hi], trials


def search_plan(rankings: list[list[str]], passes: Callable[[list[str]], bool],
                prune_budget: int = 48) -> tuple[list[str] | None, int]:
    """The fewest layers to keep in float32: the shortest passing prefix over several worst-first rankings
    (bisection), then each kept layer dropped in turn, least damaging first, where the plan still passes
    (at most `prune_budget` runs). Returns (layers or None, trial runs)."""
    memo: dict[frozenset, bool] = {}

    def check(keep: list[str]) -> bool:
        key = frozenset(keep)
        if key not in memo:
            memo[key] = passes(list(keep))
        return memo[key]

    best = None
    for ranking in rankings:
        prefix, _ = bisect_plan(ranking, check)
        if prefix is not None and (best is None or len(prefix) < len(best)):
            best = prefix
    if not best:
        return best, len(memo)
    keep = list(best)
    for layer in list(reversed(best))[:prune_budget]:
        trial = [k for k in keep if k != layer]
        if check(trial):
            keep = trial
    return keep, len(memo)


def compact(keep: list[str], candidates: Iterable[str]) -> list[str]:
    """`keep` written with globs where every layer a glob selects (among `candidates`, the layers a plan can
    move) is kept: 'encoder.layers.*.layer_norm' for all twelve. Selects exactly the same layers."""
    candidates, kept = list(candidates), set(keep)
    out: list[str] = []
    covered: set[str] = set()
    for layer in keep:
        if layer in covered:
            continue
        glob = re.sub(r"\.\d+(?=\.|$)", ".*", layer)
        chosen = [c for c in candidates if precision.matches(c, (glob,))]
        if glob != layer and len(chosen) > 1 and set(chosen) <= kept:
            out.append(glob)
            covered |= set(chosen)
        else:
            out.append(layer)
            covered.add(layer)
    return out


WHOLE = ("*",)  # a model's keep list when every one of its layers stays float32


def search_pipeline_plan(base: dict[str, list[str]], ranking: Callable[[str], list[str]],
                         measure: Callable[[dict[str, list[str]]], tuple[bool, float]]) -> tuple[dict | None, int]:
    """The pipeline's plan (a keep list per model): the models' own plans (`base`) if they meet the end-to-end
    target; else models kept whole in float32, the most helpful first (each tried alone), until it holds; then
    each of those back to its own plan plus the shortest passing prefix of its worst-first `ranking(model)`
    (bisection). `measure(keeps)` runs the pipeline: (meets the target, score). Returns (plan or None, runs)."""
    memo: dict[tuple, tuple[bool, float]] = {}

    def run(keeps: dict[str, list[str]]) -> tuple[bool, float]:
        key = tuple(sorted((p, tuple(k)) for p, k in keeps.items()))
        if key not in memo:
            memo[key] = measure({p: list(k) for p, k in keeps.items()})
        return memo[key]

    current = {p: list(k) for p, k in base.items()}
    if run(current)[0]:
        return current, len(memo)
    alone = {p: run({**current, p: list(WHOLE)})[1] for p in base}
    whole = []
    for part in sorted(base, key=lambda p: -alone[p]):
        current[part] = list(WHOLE)
        whole.append(part)
        if run(current)[0]:
            break
    else:
        return None, len(memo)
    for part in reversed(whole):  # the one needed least first
        rest = [k for k in ranking(part) if not precision.matches(k, base[part])]  # the model's plan: globs

        def passes(k: list[str], p: str = part, n: int = len(rest)) -> bool:  # all of `rest`: the model whole
            return run({**current, p: list(WHOLE) if len(k) == n else base[p] + k})[0]

        prefix, _ = bisect_plan(rest, passes)
        if prefix is not None and len(prefix) < len(rest):
            current[part] = base[part] + prefix
    return current, len(memo)


# ----------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One precision of one subject: domain metrics on the domain case, speed, memory, per-tap errors."""

    plan: Plan
    domain: dict = field(default_factory=dict)
    meets: bool = False
    seconds: float = math.nan
    peak_mib: float = math.nan
    taps: list[dict] = field(default_factory=list)  # analysis case, in execution order


class Study:
    """The precision study of the subjects, on one Parity harness (golden store, weights, live oracle)."""

    def __init__(self, parity: Parity | None = None, plans: dict[str, dict[str, Plan]] | None = None,
                 timing_rounds: int = 3, log: Callable[[str], None] = lambda s: None,
                 pipeline_plans: dict[str, dict[str, Plan]] | None = None):
        self.parity = parity or Parity()
        self.plans = plans if plans is not None else {}  # key -> dtype -> Plan (searched or loaded)
        # the pipeline's plan: dtype -> model -> Plan (searched end to end, or loaded)
        self.pipeline_plans = pipeline_plans if pipeline_plans is not None else {}
        self.rankings: dict[tuple[str, str], list[dict]] = {}  # (key, dtype) -> worst-first layers
        self.timing_rounds = timing_rounds
        self.log = log

    # --- building and running -----------------------------------------------------------------------
    def models_plans(self, dtype: str) -> dict[str, Plan]:
        """The pipeline's models each with its own plan in `dtype` (the bare dtype where it has none)."""
        return {part: self.plans.get(part, {}).get(dtype) or Plan(dtype) for part in PIPELINE_PARTS}

    def _plans_for(self, subj: Subject, plan: Plan, planned: bool) -> dict[str, Plan]:
        """The plans to build `subj` with: `plan` itself, or for the pipeline its models' (the pipeline's plan in
        `plan.dtype` when `planned`, else the bare dtype)."""
        if subj.key != "pipeline":
            return {subj.key: plan}
        if not planned:
            return {part: Plan(plan.dtype) for part in PIPELINE_PARTS}
        return dict(self.pipeline_plans.get(plan.dtype) or self.models_plans(plan.dtype))

    def build(self, subj: Subject, case: str, plan: Plan, planned: bool = False,
              parts: dict[str, Plan] | None = None) -> Any:
        comp = self.parity.component(subj.component)
        spec = comp.spec.case(case)
        return comp.build_mlx(self.parity.weights(comp, case), spec,
                              parts if parts is not None else self._plans_for(subj, plan, planned))

    def domain_run(self, subj: Subject, plan: Plan, timed: bool = False, planned: bool = False,
                   parts: dict[str, Plan] | None = None) -> Run:
        """Run `plan` on the subject's domain case: its output against the golden oracle (and, `timed`, the
        median seconds of `timing_rounds` runs and MLX's peak memory). The pipeline: its models with their
        `planned` plans, or `parts` (model -> Plan)."""
        from rvc_mlx.runtime import mx

        comp = self.parity.component(subj.component)
        spec = comp.spec.case(subj.domain_case)
        weights = self.parity.weights(comp, subj.domain_case)
        ref = self.parity.reference(comp, subj.domain_case)
        audio, _ = comp.load_input(spec)
        model = self.build(subj, subj.domain_case, plan, planned, parts)
        run = mlx_run(comp, weights, spec, audio, [subj.output], model=model)
        out = Run(plan)
        ignore = comp.pitch_ignore(ref, self.parity.policy, UNIT_ROUNDOFF.get(plan.dtype, 0.0)).get(subj.output)
        out.domain = domain_metrics(subj, run.values[subj.output], ref.value(subj.output), self._rate(subj, ref),
                                    ignore)
        out.meets = meets(subj, out.domain)
        if timed:
            times = []
            mx.reset_peak_memory()
            with comp.constants(spec, model):
                while len(times) < self.timing_rounds and sum(times) < TIMING_BUDGET_S:
                    start = time.perf_counter()
                    mx.eval([a for a in _flat(comp.run_mlx(model, audio)) if isinstance(a, mx.array)])
                    times.append(time.perf_counter() - start)
            out.seconds = statistics.median(times)
            out.peak_mib = mx.get_peak_memory() / 2**20
        return out

    def _passes(self, subj: Subject, plan: Plan) -> bool:
        """A trial of the plan search: the target with the search margin."""
        return meets(subj, self.domain_run(subj, plan).domain, margin=True)

    @staticmethod
    def _rate(subj: Subject, ref) -> int | None:
        if subj.domain != "audio":
            return None
        from rvc_common.config import synth_variants

        variant = ref.weights.get("variant") or ref.input.get("variant")
        return synth_variants()[variant].sr

    def tap_errors(self, subj: Subject, plan: Plan, ref) -> list[dict]:
        """Every tap of the analysis case, run layer by layer in `plan`, against the oracle."""
        comp = self.parity.component(subj.component)
        spec = comp.spec.case(subj.case)
        audio, _ = comp.load_input(spec)
        model = self.build(subj, subj.case, plan)
        run = mlx_run(comp, self.parity.weights(comp, subj.case), spec, audio, list(ref.taps),
                      layer_by_layer=True, model=model)
        out = []
        for info in ref.ordered():
            if info.name in run.values and run.values[info.name].shape == tuple(info.shape):
                met = tensor_metrics(run.values[info.name], ref.value(info.name))
                out.append({"name": info.name, "order": info.order, "type": info.module_type,
                            **{k: met[k] for k in ("max_rel", "rmse_rel", "snr_db")}})
        return out

    def local_errors(self, subj: Subject, plan: Plan, ref, every: bool = False) -> dict[str, dict]:
        """The error each layer with weights adds by itself under `plan` (the reduced-precision ones, or with
        `every` all of them), by module path: run on the oracle's recorded inputs (layer by layer), against the
        oracle's output (the worst of its outputs; NaN for a layer without a tap of its own)."""
        comp = self.parity.component(subj.component)
        spec = comp.spec.case(subj.case)
        model = self.build(subj, subj.case, plan)
        root = comp.mlx_module(model)
        chosen = {path for path, dt in precision.module_dtypes(root, plan).items() if path and (every or
                                                                                                dt != "float32")}
        nan = {"max_rel": math.nan, "rmse_rel": math.nan, "snr_db": math.nan}
        out = {path: dict(nan) for path in chosen}
        with comp.constants(spec, model), instrument.layers(True):
            for name, value, _ in local_outputs(comp, ref, root, None,
                                                {n for n in ref.taps if n.split(":")[0] in chosen}):
                met, path = tensor_metrics(value, ref.value(name)), name.split(":")[0]
                if not met["rmse_rel"] <= out[path]["rmse_rel"]:  # the worst output (NaN: none yet)
                    out[path] = {k: met[k] for k in nan}
        return out

    def damage(self, subj: Subject, dtype: str, ref, layers: Iterable[str]) -> dict[str, float]:
        """The damage each layer does: the probe's error (rmse_rel vs the oracle) when that layer alone runs in
        `dtype` and the rest of the model in float32 (one run per layer, on one model whose layer is swapped)."""
        comp = self.parity.component(subj.component)
        spec = comp.spec.case(subj.case)
        weights = self.parity.weights(comp, subj.case)
        audio, _ = comp.load_input(spec)
        model = self.build(subj, subj.case, Plan("float32"))
        modules = dict(comp.mlx_module(model).named_modules())
        target = ref.value(subj.probe)
        out = {}
        for name in layers:
            with _reduced(modules[name], dtype):
                run = mlx_run(comp, weights, spec, audio, [subj.probe], model=model)
            out[name] = tensor_metrics(run.values[subj.probe], target)["rmse_rel"]
        return out

    def ranking(self, subj: Subject, dtype: str, ref=None) -> list[dict]:
        """The subject's layers worst first by their damage in `dtype` (each with its own error), computed once."""
        if (subj.key, dtype) not in self.rankings:
            if ref is None:
                comp = self.parity.component(subj.component)
                ref = self.parity.reference(comp, subj.case, live=True, keep_inputs=True)
            self.log(f"{subj.key}: {dtype} layers teacher-forced, then one at a time")
            local = self.local_errors(subj, Plan(dtype), ref)
            hurt = self.damage(subj, dtype, ref, local)
            self.rankings[subj.key, dtype] = [{"name": n, "damage": hurt[n], **local[n]}
                                              for n in sorted(local, key=lambda n: -hurt[n])]
        return self.rankings[subj.key, dtype]

    def search_pipeline(self, subj: Subject, dtype: str) -> dict:
        """The pipeline's plan in `dtype` (`search_pipeline_plan`, from its models' own plans): the plans entry of
        the study's result. Each trial is one run of the pipeline's domain case."""
        base = self.models_plans(dtype)
        scores: list[dict] = []

        def measure(keeps: dict[str, list[str]]) -> tuple[bool, float]:
            run = self.domain_run(subj, Plan(dtype), parts={p: Plan(dtype, tuple(k)) for p, k in keeps.items()})
            scores.append({"keep": {p: len(k) if list(k) != list(WHOLE) else "all" for p, k in keeps.items()},
                           "snr_db": run.domain["snr_db"]})
            self.log(f"pipeline: {dtype} trial {scores[-1]['keep']}: SNR {run.domain['snr_db']:.2f} dB")
            return meets(subj, run.domain, margin=True), run.domain["snr_db"]

        keep, trials = search_pipeline_plan({p: list(q.keep) for p, q in base.items()},
                                            lambda part: [r["name"] for r in self.ranking(subject(part), dtype)],
                                            measure)
        if keep is None:
            self.pipeline_plans.pop(dtype, None)
        else:
            # a refined model's list compacted over its layers (the others are their committed plans, as written)
            keep = {p: compact(k, [r["name"] for r in self.rankings[p, dtype]])
                    if k != list(WHOLE) and (p, dtype) in self.rankings else k for p, k in keep.items()}
            self.pipeline_plans[dtype] = {p: Plan(dtype, tuple(k)) for p, k in keep.items()}
        return {"keep": keep, "trials": trials, "found": keep is not None, "models_plans_snr_db": scores[0]["snr_db"],
                "trial_runs": scores}

    # --- the study of one subject -------------------------------------------------------------------
    def analyse(self, subj: Subject, search: bool = True, dtypes: Iterable[str] = precision.REDUCED) -> dict:
        """Per-tap errors, the worst-first ranking and (with `search`) the plan of each reduced dtype in `dtypes`,
        then the domain metrics, speed and memory of float32 and of those dtypes bare and planned."""
        result: dict[str, Any] = {"component": subj.component, "case": subj.case, "domain_case": subj.domain_case,
                                  "output": subj.output, "domain": subj.domain, "target": TARGETS[subj.domain],
                                  "ranking": {}, "plans": {}, "precisions": {}}
        ref = None
        if subj.case is not None:
            comp = self.parity.component(subj.component)
            ref = self.parity.reference(comp, subj.case, live=True, keep_inputs=True)
        dtypes = [d for d in precision.REDUCED if d in set(dtypes)]
        for dtype in dtypes:
            if ref is None:  # the pipeline: searched end to end from its models' plans
                if search:
                    self.log(f"{subj.key}: {dtype} plan search from its models' plans")
                    result["plans"][dtype] = self.search_pipeline(subj, dtype)
                elif dtype in self.pipeline_plans:
                    result["plans"][dtype] = {"keep": {p: list(q.keep) for p, q in self.pipeline_plans[dtype].items()},
                                              "trials": 0, "found": True, "committed": True}
            else:
                rows = self.ranking(subj, dtype, ref)
                result["ranking"][dtype] = rows
                local = {r["name"]: r for r in rows}
                ranking = [r["name"] for r in rows]
                if search:
                    self.log(f"{subj.key}: {dtype} plan search over {len(ranking)} layers")
                    by_own_error = sorted(local, key=lambda n: -np.nan_to_num(local[n]["rmse_rel"], nan=-1.0))
                    keep, trials = search_plan([ranking, by_own_error],
                                               lambda k, d=dtype: self._passes(subj, Plan(d, tuple(k))))
                    result["plans"][dtype] = {"keep": keep, "trials": trials, "found": keep is not None}
                    if keep is not None:
                        keep = compact(keep, local)
                        result["plans"][dtype]["keep"] = keep
                        self.plans.setdefault(subj.key, {})[dtype] = Plan(dtype, tuple(keep))
                    else:  # no plan meets the target: say so, never run a stale one under its name
                        self.plans.get(subj.key, {}).pop(dtype, None)
                elif dtype in self.plans.get(subj.key, {}):  # the committed plan, run below
                    result["plans"][dtype] = {"keep": list(self.plans[subj.key][dtype].keep), "trials": 0,
                                              "found": True, "committed": True}
        for name in PRECISIONS:
            planned = name.startswith("plan ")
            dtype = name.split()[-1]
            if dtype != "float32" and dtype not in dtypes:
                continue
            if subj.key == "pipeline":
                plan = Plan(dtype) if not planned or dtype in self.pipeline_plans else None
            else:
                plan = self.plans.get(subj.key, {}).get(dtype) if planned else Plan(dtype)
            if plan is None:
                continue
            self.log(f"{subj.key}: {name}")
            run = self.domain_run(subj, plan, timed=True, planned=planned)
            if ref is not None:
                run.taps = self.tap_errors(subj, plan, ref)
            keep = {p: list(q.keep) for p, q in self._plans_for(subj, plan, planned).items()} \
                if subj.key == "pipeline" else list(plan.keep)
            result["precisions"][name] = {"keep": keep, "domain": run.domain, "meets": run.meets,
                                          "seconds": run.seconds, "peak_mib": run.peak_mib, "taps": run.taps}
        return result


def _flat(value: Any) -> list:
    """The arrays in a run's output (an array, or tuples / lists / dicts of them): MLX is lazy, so a timed run
    evaluates what it returns."""
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flat(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _flat(v)]
    return [value]


@contextmanager
def _reduced(module: Any, dtype: str) -> Iterator[None]:
    """`module` (one layer with weights) in `dtype` for the block, then exactly as it was."""
    cls, arrays = type(module), {k: module[k] for k in precision.own_arrays(module)}
    marks = {k: module.__dict__[k] for k in ("_compute_dtype", "_precision") if k in module.__dict__}
    precision.apply(module, Plan(dtype))
    try:
        yield
    finally:
        module.__class__ = cls
        for k, v in arrays.items():
            module[k] = v
        for k in ("_compute_dtype", "_precision"):
            module.__dict__.pop(k, None)
        module.__dict__.update(marks)


def loaded_plans(path: Path | None = None) -> dict[str, dict[str, Plan]]:
    """The committed plans (golden/precision.toml) by subject and reduced dtype: only those the file holds (a
    subject whose search found none has no entry, and is never run as a 'plan')."""
    import tomllib

    path = precision.PLAN_FILE if path is None else Path(path)
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    return {key: {d: precision.load_plan(key, d, path) for d in precision.REDUCED if d in data[key]}
            for key in data if key != precision.PIPELINE}


def loaded_pipeline_plans(path: Path | None = None) -> dict[str, dict[str, Plan]]:
    """The committed pipeline plans by reduced dtype: model -> Plan (only the dtypes the file holds)."""
    import tomllib

    path = precision.PLAN_FILE if path is None else Path(path)
    data = tomllib.loads(path.read_text()).get(precision.PIPELINE, {}) if path.is_file() else {}
    return {d: {part: precision.pipeline_plan(part, d, path) for part in PIPELINE_PARTS}
            for d in precision.REDUCED if d in data}


def run(keys: Iterable[str] | None = None, search: bool = True, plan_path: Path | None = None,
        log: Callable[[str], None] = print, timing_rounds: int = 3, weights_dir: Path | None = None,
        done: Callable[[dict], None] = lambda report: None, dtypes: Iterable[str] = precision.REDUCED) -> dict:
    """The study of `keys` (every subject by default): with `search`, plans are searched; without, the committed
    plans (`plan_path`) are run. The pipeline's search starts from its models' plans (searched in this run, else
    committed) and ranks their layers as their own studies do (computed when they were not studied in this run).
    `done(report)` is called after each subject."""
    wanted = [s for s in SUBJECTS if keys is None or s.key in set(keys)]  # in SUBJECTS order: pipeline last
    study = Study(Parity(weights_dir=weights_dir), loaded_plans(plan_path), timing_rounds, log,
                  loaded_pipeline_plans(plan_path))
    from rvc_mlx.testing.environment import environment

    out = {"tool": "rvc-mlx precision study", "environment": environment(), "targets": TARGETS,
           "threads": os.environ.get("OMP_NUM_THREADS"), "subjects": {}}
    for subj in wanted:
        out["subjects"][subj.key] = study.analyse(subj, search=search, dtypes=dtypes)
        out["plans"] = {k: {d: list(p.keep) for d, p in v.items()} for k, v in study.plans.items()}
        out["plans"]["pipeline"] = {d: {m: list(p.keep) for m, p in v.items()}
                                    for d, v in study.pipeline_plans.items()}
        done(out)  # after each subject: an interrupted study keeps what it finished
    return out
