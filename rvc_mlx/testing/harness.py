"""Orchestration: build a reference (golden or a live float64 oracle run of the twin), run MLX with taps,
judge it, localise with teacher forcing, and stage regenerated goldens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.compare import CaseResult, Check, compare_case
from rvc_mlx.testing.components import GOLDEN, Component, SpecError, Weights, registry
from rvc_mlx.testing.golden import CaseData, GoldenError, GoldenStore, TapInfo, tensor_sha256, tensor_stats, versions
from rvc_mlx.testing.metrics import tensor_metrics
from rvc_mlx.testing.taps import (MLXRecorder, TorchRecorder, _flatten, _mlx_is_array, _torch_is_array,
                                  from_torch_layout, to_torch_layout, tree_map)
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
    with TorchRecorder(comp.twin_module(twin64), root=comp.root, inputs=keep_inputs, select=select64) as rec64:
        comp.run_twin(twin64, audio)
    keep = (lambda n, t: comp.stored(case, n, t)) if for_golden else comp.compared
    names = [n for n, r in rec64.records.items() if keep(n, r.module_type)]
    rec32 = None
    if with_fp32:
        twin32 = comp.twin(weights, torch.float32)
        with TorchRecorder(comp.twin_module(twin32), root=comp.root, select=names) as rec32:
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


def mlx_values(comp: Component, weights: Weights, audio: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Run the MLX model with taps on `names`; values in PyTorch layout."""
    model = comp.mlx(weights)
    with MLXRecorder(comp.mlx_module(model), comp.layouts, root=comp.root, select=names) as rec:
        comp.run_mlx(model, audio)
    return rec.values()


def _mlx_submodule(root: Any, path: str, root_name: str) -> Any:
    if path == root_name:
        return root
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def teacher_forced(comp: Component, ref: CaseData, weights: Weights, policy: Policy) -> dict[str, dict]:
    """Run each tapped MLX module and its float32 twin module on the oracle's recorded inputs; judge the
    local errors with the same policy. Separates a local bug from error inherited from upstream."""
    import mlx.core as mx
    import torch

    mlx_root = comp.mlx_module(comp.mlx(weights))
    t32_root = comp.twin_module(comp.twin(weights, torch.float32))
    out: dict[str, dict] = {}
    for info in ref.ordered():
        path = info.name.split(":")[0]
        inputs = ref.oracle_inputs.get(info.name)
        if info.module_type == "tap" or "#" in path or inputs is None:
            continue
        args, kwargs = inputs
        in_layout = comp.layouts.inputs(path)
        is_np = lambda a: isinstance(a, np.ndarray)  # noqa: E731

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
        m_flat = dict(_flatten(path, m_out, _mlx_is_array))
        t_args, t_kwargs = tree_map(
            lambda a: torch.from_numpy(np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype)),
            (args, kwargs), is_np)
        with torch.no_grad():
            t_mod = t32_root if path == comp.root else t32_root.get_submodule(path)
            t_out = t_mod(*t_args, **t_kwargs)
        t_flat = dict(_flatten(path, t_out, _torch_is_array))
        if info.name not in m_flat or info.name not in t_flat:
            continue
        mx.eval(m_flat[info.name])
        m_val = to_torch_layout(np.array(m_flat[info.name]), comp.layouts.output(info.name), info.name)
        t_val = t_flat[info.name].numpy()
        target = ref.value(info.name)
        if m_val.shape != target.shape:
            out[info.name] = {"passed": False, "detail": f"shape {m_val.shape} vs {target.shape}"}
            continue
        m_met, t_met = tensor_metrics(m_val, target), tensor_metrics(t_val, target)
        rule = policy.rule(comp.name, info.name)
        checks = [Check(m, m_met[m], rule.limit(t_met[m]), t_met[m]) for m in rule.metrics]
        out[info.name] = {"mlx": m_met, "torch": t_met, "passed": all(c.ok for c in checks),
                          "limits": {c.metric: c.limit for c in checks}}
    return out


def _f0_taps(ref: CaseData) -> list[str]:
    return [t.name for t in ref.ordered() if t.kind == "f0"]


class Parity:
    """One pytest session's harness state: golden store, policy, components, regeneration, results."""

    def __init__(self, golden_root: Path = GOLDEN, regen: bool = False, weights_dir: Path | None = None):
        self.store = GoldenStore(golden_root)
        self.policy = load_policy(Path(golden_root) / "tolerances.toml")
        self.components = registry()
        self.regen = regen
        self.weights_dir = weights_dir
        self.txn = self.store.transaction() if regen else None
        self.regen_errors: list[str] = []
        self.results: list[CaseResult] = []
        self._weights: dict[str, Weights] = {}

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
            try:
                ref = live_reference(comp, case, weights, keep_inputs, for_golden=for_golden)
            except Exception as e:
                if self.regen:
                    self.regen_errors.append(f"{comp.name}/{case}: {type(e).__name__}: {e}")
                raise
            if for_golden:
                self.txn.stage(ref)
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

    def check(self, component: str, case: str, live: bool = False, teacher: bool = False) -> CaseResult:
        """Judge the MLX port of `component` on `case`; record the result for the report."""
        comp = self.component(component)
        ref = self.reference(comp, case, live=live or teacher, keep_inputs=teacher)
        audio, _ = comp.load_input(comp.spec.case(case))
        values = mlx_values(comp, self.weights(comp, case), audio, list(ref.taps))
        result = compare_case(ref, values, self.policy, comp.pitch_ignore(ref, self.policy))
        if self.weights_dir is not None:
            result.source = f"live ({self.weights_dir})"
        self._truth(comp, case, ref, values, result)
        result.extra.update(comp.extra_metrics(ref, values))
        if teacher:
            local = teacher_forced(comp, ref, self.weights(comp, case), self.policy)
            for tap in result.taps:
                tap.local = local.get(tap.name)
            result.extra["teacher_forced"] = True
        self.results.append(result)
        return result

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
