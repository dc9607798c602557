"""Orchestration: build a reference (golden or a live float64 oracle run of the twin), run MLX with taps on the
shipped path and layer by layer, judge both, localise (the fused block, teacher forcing), and stage regenerated
goldens."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rvc_common import instrument
from rvc_mlx import dispatch
from rvc_mlx.testing.compare import CaseResult, Check, compare_case
from rvc_mlx.testing.components import GOLDEN, CaseSpec, Component, Coverage, SpecError, Weights, registry
from rvc_mlx.testing.golden import CaseData, GoldenError, GoldenStore, TapInfo, tensor_sha256, tensor_stats, versions
from rvc_mlx.testing.metrics import tensor_metrics
from rvc_mlx.testing.taps import (
    CallInfo,
    MLXRecorder,
    TorchRecorder,
    _flatten,
    _mlx_or_host_array,
    _torch_is_array,
    from_torch_layout,
    host_array,
    to_torch_layout,
    tree_map,
)
from rvc_mlx.testing.tolerances import Policy, load_policy


def live_reference(comp: Component, case_name: str, weights: Weights, keep_inputs: bool = False,
                   for_golden: bool = True, with_fp32: bool = True) -> CaseData:
    """Run the twin in float64 (oracle) and float32 (its own error) on one case's input; keep the taps the
    golden stores (`for_golden`) or every tap a live comparison judges. Without `with_fp32` (freshness checks)
    the float32 run is skipped and the torch32 metrics stay empty."""
    import torch

    case = comp.spec.case(case_name)
    audio, input_info = comp.load_input(case)
    twin64 = comp.twin(weights, torch.float64)
    # a golden that keeps a list of taps need not record the rest (CREPE-full's conv1 is 1 MB per frame)
    select64 = list(case.store) if for_golden and isinstance(case.store, list) else None
    with comp.constants(case, twin64), TorchRecorder(comp.twin_module(twin64), root=comp.root,
                                                     inputs=keep_inputs, select=select64) as rec64:
        comp.run_twin(twin64, audio)
    keep = (lambda n, t: comp.stored(case, n, t)) if for_golden else comp.compared
    names = [n for n, r in rec64.records.items() if keep(n, r.module_type)]
    rec32 = None
    if with_fp32:
        twin32 = comp.twin(weights, torch.float32)
        with comp.constants(case, twin32), TorchRecorder(comp.twin_module(twin32), root=comp.root,
                                                         select=names) as rec32:
            comp.run_twin(twin32, audio)
    tensors: dict[str, np.ndarray] = {}
    taps: dict[str, TapInfo] = {}
    first_with_digest: dict[str, str] = {}
    for order, name in enumerate(names):
        r64 = rec64.records[name]
        ref = np.asarray(r64.value, dtype=np.float32)
        info = TapInfo(name, tuple(ref.shape), order, r64.module_type, comp.spec.kind(name))
        info.stats = tensor_stats(ref)
        if rec32 is not None:
            if name not in rec32.records:
                raise SpecError(f"{comp.name}/{case_name}: tap {name} recorded in float64 but not in float32")
            v32 = rec32.records[name].value
            info.torch32 = tensor_metrics(v32, ref)
            info.torch32_vs_fp64 = tensor_metrics(v32, r64.value)
        digest = tensor_sha256(ref)
        if digest in first_with_digest:  # bitwise duplicate (e.g. a container returning a child's output)
            info.alias_of = first_with_digest[digest]
        else:
            first_with_digest[digest] = name
            tensors[name] = ref
        taps[name] = info
    inputs = {n: rec64.records[n].inputs for n in names} if keep_inputs else {}
    return CaseData(comp.name, case_name, tensors, taps, input_info, dict(weights.info), versions(), "live",
                    inputs)


@dataclass
class MLXRun:
    """One recorded MLX run: tap values (PyTorch layout), how each tap was computed, splits, implementations."""

    values: dict[str, np.ndarray]
    calls: dict[str, CallInfo]
    splits: dict[str, int]
    implementations: set[str]
    events: list[tuple[str, str | None, str]]


def mlx_run(comp: Component, weights: Weights, case: CaseSpec, audio: Any, names: list[str],
            layer_by_layer: bool = False, model: Any = None) -> MLXRun:
    """Run the MLX model (the session's, or `model`) on the case's input (with its constants) on the shipped
    path, or layer by layer; keep the taps in `names`."""
    model = comp.mlx(weights) if model is None else model
    with comp.constants(case, model), MLXRecorder(comp.mlx_module(model), comp.layouts, root=comp.root,
                                                  select=names, layer_by_layer=layer_by_layer) as rec:
        comp.run_mlx(model, audio)
    return MLXRun(rec.values(), rec.calls, dict(rec.splits), rec.implementations(), rec.events)


def fused_block(first: str, passing: set[str], run: MLXRun, shipped_only: set[str]) -> str:
    """Where the shipped path diverges when the layer-by-layer run passes: the work that used an implementation
    the layer-by-layer run never used (a fused kernel, a host-array stage, a split) between the last passing
    shipped tap and the first divergent one, named by the call that did it (or by the divergent tap itself, for
    a value such a stage produced)."""
    info = run.calls.get(first)
    hits = sorted(set(info.own) & shipped_only) if info is not None else []
    if hits and info.reported and info.parent in run.calls:  # the parent's fused stage computed it
        return f"{info.parent} ({run.calls[info.parent].module_type}: {', '.join(hits)})"
    if hits:
        return f"{first} ({info.module_type}: {', '.join(hits)})"
    done = [i for i, (kind, name, _) in enumerate(run.events) if kind == "done" and name == first]
    end = done[0] if done else len(run.events)
    start = max((i for i, (kind, name, _) in enumerate(run.events[:end]) if kind == "done" and name in passing),
                default=-1)
    work: dict[str | None, list[str]] = {}  # frame -> its shipped-only implementations, in order
    for kind, frame, impl in run.events[start + 1:end]:
        if kind == "use" and impl in shipped_only:
            impls = work.setdefault(frame, [])
            if impl not in impls:
                impls.append(impl)
    if not work:
        return f"{first} (shipped-only implementations: {', '.join(sorted(shipped_only)) or 'none'})"
    frame, impls = next(iter(work.items()))
    kind = run.calls[frame].module_type if frame in run.calls else "outside any module"
    return f"{frame or 'the top level'} ({kind}: {', '.join(impls)})"


def _mlx_submodule(root: Any, path: str, root_name: str) -> Any:
    if path == root_name:
        return root
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def teacher_forced(comp: Component, ref: CaseData, weights: Weights, policy: Policy, names: set[str] | None = None,
                   layer_by_layer: bool = False) -> dict[str, dict]:
    """Run each tapped MLX module (those in `names`) and its float32 twin module on the oracle's recorded inputs,
    on the shipped path or layer by layer; judge the local errors with the same policy. Separates a local bug
    from error inherited from upstream."""
    with instrument.layers(layer_by_layer):
        return _teacher_forced(comp, ref, weights, policy, names)


def _teacher_forced(comp: Component, ref: CaseData, weights: Weights, policy: Policy,
                    names: set[str] | None) -> dict[str, dict]:
    import torch

    mlx_root = comp.mlx_module(comp.mlx(weights))
    t32_root = comp.twin_module(comp.twin(weights, torch.float32))
    out: dict[str, dict] = {}
    for name, m_val, t_val in local_outputs(comp, ref, mlx_root, t32_root, names):
        target = ref.value(name)
        if m_val.shape != target.shape:
            out[name] = {"passed": False, "detail": f"shape {m_val.shape} vs {target.shape}"}
            continue
        m_met, t_met = tensor_metrics(m_val, target), tensor_metrics(t_val, target)
        rule = policy.rule(comp.name, name)
        checks = [Check(m, m_met[m], rule.limit(t_met[m]), t_met[m]) for m in rule.metrics]
        out[name] = {"mlx": m_met, "torch": t_met, "passed": all(c.ok for c in checks),
                     "limits": {c.metric: c.limit for c in checks}}
    return out


def local_outputs(comp: Component, ref: CaseData, mlx_root: Any, t32_root: Any | None,
                  names: set[str] | None) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """For each tapped module with recorded oracle inputs (those in `names`): (tap, the MLX module's output on
    those inputs, the float32 twin module's output or None without `t32_root`), in PyTorch layout."""
    import torch

    from rvc_mlx.runtime import mx

    is_np = lambda a: isinstance(a, np.ndarray)  # noqa: E731
    for info in ref.ordered():
        path = info.name.split(":")[0]
        inputs = ref.oracle_inputs.get(info.name)
        if info.module_type == "tap" or "#" in path or inputs is None or names is not None and info.name not in names:
            continue
        args, kwargs = inputs
        in_layout = comp.layouts.inputs(path)

        def to_mlx(a, lay, n=info.name):
            a = from_torch_layout(a, lay, n)
            return mx.array(np.ascontiguousarray(a, np.float32 if a.dtype.kind == "f" else a.dtype))

        per_arg = isinstance(in_layout, tuple)
        if per_arg and len(in_layout) != len(args):  # e.g. the no-f0 generator's (x, g): all like its output
            in_layout, per_arg = comp.layouts.output(path), False
        arg_layouts = in_layout if per_arg else (in_layout,) * len(args)
        kw_layout = comp.layouts.output(path) if per_arg else in_layout
        m_args = [tree_map(lambda a, lay=lay: to_mlx(a, lay), x, is_np)
                  for x, lay in zip(args, arg_layouts, strict=True)]
        m_kwargs = tree_map(lambda a, lay=kw_layout: to_mlx(a, lay), kwargs, is_np)
        m_out = _mlx_submodule(mlx_root, path, comp.root)(*m_args, **m_kwargs)
        m_flat = dict(_flatten(path, m_out, _mlx_or_host_array))
        t_flat = None
        if t32_root is not None:
            t_args, t_kwargs = tree_map(
                lambda a: torch.from_numpy(np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype)),
                (args, kwargs), is_np)
            with torch.no_grad():
                t_mod = t32_root if path == comp.root else t32_root.get_submodule(path)
                t_flat = dict(_flatten(path, t_mod(*t_args, **t_kwargs), _torch_is_array))
        if info.name not in m_flat or t_flat is not None and info.name not in t_flat:
            continue
        m_val = m_flat[info.name]
        if not isinstance(m_val, np.ndarray):
            m_val = host_array(m_val)
        m_val = to_torch_layout(m_val, comp.layouts.output(info.name), info.name)
        yield info.name, m_val, (t_flat[info.name].numpy() if t_flat is not None else None)


def _f0_taps(ref: CaseData) -> list[str]:
    return [t.name for t in ref.ordered() if t.kind == "f0"]


@contextmanager
def _pure_mlx():
    """MLX's own ops only: no C++ kernels, MLX's transcendentals (what macOS and MLX's GPU backends run)."""
    with dispatch.use_kernels(False), dispatch.use_math("mlx"):
        yield


def free_memory() -> None:
    """Unreachable models collected, MLX's buffer cache emptied and the C heap trimmed (glibc keeps freed pages
    of large loads otherwise), so that a released model's memory really leaves the process."""
    import ctypes
    import gc

    from rvc_mlx.runtime import mx

    gc.collect()
    mx.clear_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS): its allocator returns memory itself
        pass


class Parity:
    """One pytest session's harness state: golden store, policy, components, regeneration, results."""

    def __init__(self, golden_root: Path = GOLDEN, regen: bool = False, weights_dir: Path | None = None,
                 refresh_errors: bool = False):
        self.store = GoldenStore(golden_root)
        self.policy = load_policy(Path(golden_root) / "tolerances.toml")
        self.components = registry()
        self.regen = regen
        self.weights_dir = weights_dir
        self.txn = self.store.transaction(refresh_errors) if regen else None
        self.regen_errors: list[str] = []
        self.results: list[CaseResult] = []
        self._weights: dict[str, Weights] = {}
        self._regenerated: dict[tuple[str, str], CaseData] = {}

    def release(self) -> None:
        """Every component forgets its loaded models, and the memory goes back to the system (`free_memory`)."""
        for comp in self.components.values():
            comp.release()
        free_memory()

    def component(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            raise SpecError(f"no component {name!r} in golden/cases.toml") from None

    def weights(self, comp: Component, case: str | None = None) -> Weights:
        spec = comp.spec.case(case) if case is not None else None
        key = comp.weights_key(spec)
        if key not in self._weights:
            self._weights[key] = comp.weights(self.weights_dir, spec)
        return self._weights[key]

    def reference(self, comp: Component, case: str, live: bool = False, keep_inputs: bool = False) -> CaseData:
        weights = self.weights(comp, case)
        if live or self.regen or self.weights_dir is not None:
            for_golden = self.regen and not live
            if for_golden and (comp.name, case) in self._regenerated:  # the case's other path: staged already
                return self._regenerated[comp.name, case]
            try:
                ref = live_reference(comp, case, weights, keep_inputs, for_golden=for_golden)
            except Exception as e:
                if self.regen:
                    self.regen_errors.append(f"{comp.name}/{case}: {type(e).__name__}: {e}")
                raise
            if for_golden:
                try:  # judge MLX against what will be committed: a kept golden keeps its values and torch32 errors
                    ref = self.txn.stage(ref)
                except GoldenError as e:
                    if str(e) not in self.regen_errors:
                        self.regen_errors.append(str(e))
                    raise
                self._regenerated[comp.name, case] = ref
            return ref
        ref = self.store.load(comp.name, case)
        _, input_info = comp.load_input(comp.spec.case(case))
        rel = self.store.rel(self.store.case_path(comp.name, case))
        if ref.input.get("sha256") != input_info["sha256"] or ref.input.get("start") != input_info["start"] \
                or ref.input.get("samples") != input_info["samples"]:
            raise GoldenError(f"{rel} was made from a different input than golden/{input_info['file']} "
                              f"[{input_info['start']}:+{input_info['samples']}] now gives: run `make golden`")
        if ref.weights.get("sha256") != weights.info["sha256"]:
            raise GoldenError(f"{rel} was made with weights {str(ref.weights.get('sha256'))[:12]}... but "
                              f"{weights.path.name} now hashes to {weights.info['sha256'][:12]}... (generator "
                              "or numpy changed): run `make golden`")
        return ref

    def check(self, component: str, case: str, live: bool = False, teacher: bool = False, pure_mlx: bool = False,
              record: bool = True) -> CaseResult:
        """Judge the MLX port of `component` on `case`, on this machine's default path (the kernels where built,
        unless RVC_MLX_KERNELS=0) or on the pure-MLX path: the shipped path at the taps it computes; layer by
        layer (attached as `.layers`) at every golden tap when the golden holds finer taps than the shipped path
        computes, when the shipped path fails (to localise) and for teacher forcing. The results go to the report
        unless `record` is False."""
        comp = self.component(component)
        spec = comp.spec.case(case)
        ref = self.reference(comp, case, live=live or teacher, keep_inputs=teacher)
        audio, _ = comp.load_input(spec)
        weights = self.weights(comp, case)
        shipped = {n for n in ref.taps if comp.shipped(spec, n)}
        layers = None
        with _pure_mlx() if pure_mlx else nullcontext():
            execution = dispatch.execution()
            run_s = mlx_run(comp, weights, spec, audio, sorted(shipped))
            result = self._judge(comp, spec, ref, run_s, shipped, "shipped", execution)
            self._crossings(spec, run_s, result)
            kernels = sorted(i for i in run_s.implementations if i.startswith("kernel "))
            if dispatch.variant() is None and kernels:
                result.problems.append(f"{result.key}: the pure-MLX run used {', '.join(kernels)}")
            if teacher or result.failing or len(shipped) < len(ref.taps):
                run_l = mlx_run(comp, weights, spec, audio, list(ref.taps), layer_by_layer=True)
                layers = self._judge(comp, spec, ref, run_l, None, "layer-by-layer", execution)
                if result.failing and layers.passed:
                    passing = {t.name for t in result.taps if t.passed}
                    result.fused_block = fused_block(result.blame.name, passing, run_s,
                                                     run_s.implementations - run_l.implementations)
            if teacher:
                with comp.constants(spec):
                    for res, names, by_layer in ((result, shipped, False), (layers, None, True)):
                        local = teacher_forced(comp, ref, weights, self.policy, names, layer_by_layer=by_layer)
                        for tap in res.taps:
                            tap.local = local.get(tap.name)
                        res.extra["teacher_forced"] = True
        result.unjudged = len(ref.taps) - len(result.taps)
        result.layers = layers
        if record:
            self.results += [result] + ([layers] if layers is not None else [])
        return result

    def uncovered(self, component: str, coverage: Coverage, case: str) -> list[str]:
        """What the golden of `case` fails to cover under `coverage` (golden/cases.toml), one line each: modules the
        twin calls (of the listed types, that the case's `store` selects and its `skip` keeps) without a stored
        tap, too few of them, or a named tap missing."""
        import torch

        comp = self.component(component)
        spec = comp.spec.case(case)
        stored = set(self.store.load(component, case).taps)
        gaps = [f"{component}/{case}: no golden tap {t}" for t in coverage.taps if t not in stored]
        if coverage.types:
            twin = comp.twin(self.weights(comp, case), torch.float32)
            audio, _ = comp.load_input(spec)
            with comp.constants(spec, twin), TorchRecorder(comp.twin_module(twin), root=comp.root) as rec:
                comp.run_twin(twin, audio)
            unchecked = set(comp.spec.exclude_types) | set(comp.spec.unstored_types)
            checked = ((lambda t: t not in unchecked) if coverage.types == "*" else (lambda t: t in coverage.types))
            called = {n for n, r in rec.records.items() if checked(r.module_type)}
            if len(called) < coverage.min_modules:
                gaps.append(f"{component}/{case}: the twin calls {len(called)} modules of the checked types, fewer "
                            f"than the {coverage.min_modules} golden/cases.toml expects")
            # of those, what the case's `store` and `skip` select (all; the component's blocks; a list of globs)
            expected = {n for n in called if comp.stored(spec, n, rec.records[n].module_type)}
            missing = sorted(expected - stored)
            if missing:
                gaps.append(f"{component}/{case}: {len(missing)} modules without a golden tap: {missing[:10]}")
        return gaps

    @staticmethod
    def _crossings(spec: CaseSpec, run: MLXRun, result: CaseResult) -> None:
        """A case that sets constants to cross a boundary fails when its shipped run no longer crosses it."""
        for work, need in spec.crosses.items():
            got = run.splits.get(work, 0)
            if got < need:
                result.problems.append(f"{result.key}: the shipped run did {work!r} in {got} piece(s), the case needs "
                                       f">= {need}: it no longer crosses the boundary it exists for "
                                       "(golden/cases.toml `crosses`)")

    def _judge(self, comp: Component, spec: CaseSpec, ref: CaseData, run: MLXRun, names: set[str] | None,
               path: str, execution: str) -> CaseResult:
        result = compare_case(ref, run.values, self.policy, comp.pitch_ignore(ref, self.policy), names)
        result.path, result.execution, result.splits = path, execution, run.splits
        for tap in result.taps:  # a tap computed with no implementation choice at all: MLX's own ops
            info = run.calls.get(tap.name)
            tap.impl = (info.impl or ("mlx ops",)) if info is not None else ()
        if self.weights_dir is not None:
            result.source = f"live ({self.weights_dir})"
        self._truth(comp, spec.name, ref, run.values, result)
        try:
            result.extra.update(comp.extra_metrics(ref, run.values))
        except Exception as e:  # e.g. audio of another length: the taps above already say where; never crash
            text = (str(e).strip().splitlines() or [""])[0]
            result.problems.append(f"{comp.name} domain metrics could not be computed ({type(e).__name__}: {text})")
        self._requirements(comp, spec, result)
        return result

    @staticmethod
    def _requirements(comp: Component, spec: CaseSpec, result: CaseResult) -> None:
        """The absolute bounds golden/cases.toml sets (`require`): each one not met is a case-level problem."""
        taps = {t.name: t for t in result.taps}
        for req in comp.spec.requirements(spec):
            if req.truth:
                sides = result.extra.get("truth", {}).get(req.tap, {})
                values = {side: sides[side].get(req.metric) for side in ("mlx", "reference") if side in sides}
            elif req.tap == "audio":
                values = {"mlx": result.extra.get("audio", {}).get(req.metric)}
            elif req.tap in taps:
                t = taps[req.tap]
                values = {"mlx": (t.pitch or {}).get(req.metric, t.mlx.get(req.metric))}
            else:
                values = {}
            if not values or any(v is None for v in values.values()):
                result.problems.append(f"{result.key}: requirement {req} could not be checked on the {result.path} "
                                       "path (no such tap or metric)")
            for side, v in values.items():
                if v is not None and ((req.min is not None and not v >= req.min)
                                      or (req.max is not None and not v <= req.max)):
                    result.problems.append(f"{result.key}: requirement {req} fails on the {result.path} path: "
                                           f"{side} {v:.6g} ({req.reason})")

    def _truth(self, comp: Component, case: str, ref: CaseData, values: dict, result: CaseResult) -> None:
        """Pitch accuracy against the input's known F0 (reported; meaningful with trained weights)."""
        from rvc_mlx.testing.metrics import pitch_metrics

        for name in _f0_taps(ref):
            truth = comp.truth_f0(comp.spec.case(case), ref.taps[name].shape[0])
            if truth is None or name not in values:
                continue
            result.extra.setdefault("truth", {})[name] = {
                "mlx": pitch_metrics(values[name], truth), "reference": pitch_metrics(ref.value(name), truth),
                "f0_truth": truth.tolist(), "f0_mlx": values[name].tolist(), "f0_reference": ref.value(name).tolist(),
            }
