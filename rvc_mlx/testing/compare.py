"""Judge MLX taps against a reference case under the tolerance policy, and blame the first divergence.

Blame: taps are visited in the oracle's execution (completion) order; the first tap that fails while every
earlier tap passes is the culprit, because its inputs are earlier taps. Teacher-forced (local) errors, when a
live oracle provided module inputs, say whether the culprit is wrong on exact inputs too.

A case is judged on the shipped path (the taps that path computes) and layer by layer (every golden tap); the
failure message's first line names the first divergent shipped tap, its second line what the layer-by-layer
run says: its first divergent layer, or that it passes and the fused path diverges inside a named block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rvc_mlx.testing.golden import CaseData, TapInfo
from rvc_mlx.testing.metrics import hz_to_cents, pitch_metrics, tensor_metrics
from rvc_mlx.testing.tolerances import Policy, Rule


@dataclass
class Check:
    """One bounded metric: value <= limit."""

    metric: str
    value: float
    limit: float
    torch: float

    @property
    def ok(self) -> bool:
        return bool(self.value <= self.limit)  # NaN fails

    @property
    def excess(self) -> float:
        if self.limit > 0:
            return self.value / self.limit
        return math.inf if self.value > 0 else 0.0


@dataclass
class TapResult:
    name: str
    module_type: str
    kind: str
    order: int
    shape: tuple[int, ...]
    status: str = "pass"  # pass | fail | missing | shape | nonfinite | error
    mlx: dict[str, float] = field(default_factory=dict)
    torch: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    rule: Rule | None = None
    detail: str = ""
    pitch: dict[str, Any] | None = None
    local: dict[str, Any] | None = None  # teacher-forced result
    impl: tuple[str, ...] = ()  # the implementations that computed it (rvc_mlx.dispatch's reports)
    where: str = ""  # a failing tap: where it fails (worst element and its values, or the first frames)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def worst(self) -> Check | None:
        failing = [c for c in self.checks if not c.ok]
        return max(failing, key=lambda c: c.excess) if failing else None

    def describe(self) -> str:
        """One line: tap, module type, what failed and the tolerance it would need."""
        head = f"{self.name} ({self.module_type})"
        if self.status in ("missing", "shape", "nonfinite", "error") or (self.status == "fail"
                                                                         and self.kind != "tensor"):
            return f"{head}: {self.detail}"
        c = self.worst()
        if c is None:
            return f"{head}: passes"
        rule = self.rule
        need_k = (c.value - rule.floor) / c.torch if c.torch > 0 else math.inf
        return (f"{head}: {c.metric} {c.value:.3g} > tolerance {c.limit:.3g} (K={rule.K:g} x torch-fp32 "
                f"{c.torch:.3g} + floor {rule.floor:.1g}); would need tolerance >= {c.value:.3g} "
                f"(K >= {need_k:.3g})")


@dataclass
class CaseResult:
    component: str
    case: str
    source: str
    taps: list[TapResult]
    input: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: str = "shipped"  # "shipped" | "layer-by-layer": the MLX code path judged
    execution: str = ""  # the implementations in force, e.g. "kernels avx2, fastmath" | "pure MLX"
    unjudged: int = 0  # golden taps this path does not compute (judged by the layer-by-layer run)
    splits: dict[str, int] = field(default_factory=dict)  # split work -> pieces it ran in
    problems: list[str] = field(default_factory=list)  # case-level failures (a boundary not crossed, ...)
    layers: "CaseResult | None" = None  # the layer-by-layer run of the same case, attached to the shipped one
    fused_block: str | None = None  # where the shipped path diverges when the layer-by-layer run passes

    @property
    def key(self) -> str:
        return f"{self.component}/{self.case}"

    @property
    def failing(self) -> list[TapResult]:
        return [t for t in self.taps if not t.passed]

    @property
    def passed(self) -> bool:
        return not self.failing and not self.problems and (self.layers is None or self.layers.passed)

    @property
    def label(self) -> str:
        """The source, the path judged and the implementations, e.g. 'golden; shipped path, kernels avx2'."""
        return f"{self.source}; {self.path} path" + (f", {self.execution}" if self.execution else "")

    @property
    def blame(self) -> TapResult | None:
        """The earliest failing tap in execution order (all earlier taps pass)."""
        return self.failing[0] if self.failing else None

    @property
    def first_nonfinite(self) -> TapResult | None:
        """The earliest tap whose MLX values hold NaN or Inf where the reference's are finite."""
        return next((t for t in self.taps if t.status == "nonfinite"), None)

    def blame_line(self) -> str:
        """One line: the first divergent tap of this path (or that all pass); a NaN/Inf anywhere comes first."""
        b, nan = self.blame, self.first_nonfinite
        if b is None:
            return f"{self.key} ({self.label}): all {len(self.taps)} taps pass"
        if nan is not None:
            before = "" if nan is b else f"; the first divergence is earlier, at {b.describe()}"
            return f"{self.key} ({self.label}): first non-finite value at {nan.describe()}{before}"
        return f"{self.key} ({self.label}): first divergence at {b.describe()}{self._local(b)}"

    def _local(self, tap: TapResult) -> str:
        """What teacher forcing says of a failing tap. Every tap before the blamed one passes, so when the blamed
        tap's module passes on the oracle's inputs the error comes from code no tap observes, not from upstream."""
        if tap.local is None:
            return ""
        if not tap.local["passed"]:
            return f"; teacher-forced it fails too (a local bug: {_local_worst(tap.local)})"
        earlier = [t for t in self.taps if t.order < tap.order]
        if tap is self.blame:
            after = f"{earlier[-1].name}" if earlier else "the input"
            return f"; teacher-forced it passes: untapped code between {after} and {tap.name}"
        return "; teacher-forced it passes (inherited error)"

    def localisation_line(self) -> str | None:
        """The layer-by-layer run's verdict, for the line after the shipped path's `blame_line`."""
        lay = self.layers
        if lay is None:
            return None
        if lay.failing:
            nan = lay.first_nonfinite
            where = (f"first non-finite value at {nan.describe()}" if nan is not None
                     else f"first divergence at {lay.blame.describe()}")
            return f"layer-by-layer ({lay.execution}): {where}"
        head = f"layer-by-layer ({lay.execution}): all {len(lay.taps)} taps pass"
        return f"{head}: the fused path diverges inside {self.fused_block}" if self.failing else head

    def failure_message(self, teacher_min: int = 0) -> str:
        """The blame line, where the blamed tap fails (worst element and both values there), the layer-by-layer
        verdict, case-level problems, then every failing tap with its detail and the teacher-forced verdicts."""
        lines = [self.blame_line()]
        first = self.first_nonfinite or self.blame
        if first is not None and first.where:
            lines.append(f"  {first.where}")
        if self.layers is not None:
            lines.append(self.localisation_line())
            lay = self.layers.first_nonfinite or self.layers.blame
            if lay is not None and lay.where:
                lines.append(f"  {lay.where}")
        lines += self.problems
        for r in (self, self.layers):
            if r is not None and r.failing:
                lines.append(f"failing taps on the {r.path} path ({len(r.failing)} of {len(r.taps)}), "
                             "execution order:")
                for t in r.failing:
                    lines.append(f"  {t.describe()}{r._local(t)}")
                    lines += [f"    {t.where}"] if t.where else []
            lines += r.teacher_lines(teacher_min if r.local_judged else 0) if r is not None else []
        return "\n".join(lines + self.notes)

    def _teacher_need(self, min_local: int) -> int:
        # the layer-by-layer run judges every golden tap; the shipped run only the coarser taps it computes
        return min_local if self.path == "layer-by-layer" else min(min_local, 1)

    def teacher_lines(self, min_local: int = 0) -> list[str]:
        """The teacher-forced verdict of this path: how many modules pass on the oracle's inputs and each one that
        fails locally (a problem line when fewer than `min_local` were judged; at least one on the shipped path)."""
        local = [t for t in self.taps if t.local is not None]
        need = self._teacher_need(min_local)
        lines = []
        if len(local) < need:
            lines.append(f"teacher forcing judged {len(local)} modules on the {self.path} path, fewer than the "
                         f"{need} golden/cases.toml expects")
        if local:
            bad = [t for t in local if not t.local["passed"]]
            lines.append(f"teacher-forced on the {self.path} path: {len(local) - len(bad)} of {len(local)} modules "
                         "pass on the oracle's inputs" + (", failing locally:" if bad else ""))
            lines += [f"  {t.name}: {_local_worst(t.local)}" for t in bad]
        return lines

    @property
    def local_judged(self) -> bool:
        """Teacher forcing ran on this path (a live oracle gave the modules' inputs)."""
        return bool(self.extra.get("teacher_forced"))

    def teacher_failures(self, min_local: int = 0) -> bool:
        """True when teacher forcing judged too few modules on this path or one fails on the oracle's inputs."""
        local = [t for t in self.taps if t.local is not None]
        return len(local) < self._teacher_need(min_local) or any(not t.local["passed"] for t in local)


def worst_element(value: np.ndarray, ref: np.ndarray, subject: str = "MLX", limit: float | None = None,
                  metric: str = "max_rel") -> str:
    """Where `value` is furthest from `ref`: the index (PyTorch layout), both values and their difference, and
    how many elements exceed an elementwise `limit` (max_rel: of the reference's absmax; max_abs: absolute)."""
    a = np.asarray(value, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    bad = ~np.isfinite(a) & np.isfinite(r)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), a.shape)
        return f"first non-finite at index {tuple(map(int, i))}: {subject} {a[i]:.6g}, reference {r[i]:.6g}"
    err = np.where(np.isfinite(a) & np.isfinite(r), np.abs(a - r), 0.0)
    if err.size == 0:
        return ""
    i = np.unravel_index(int(np.argmax(err)), a.shape)
    line = (f"worst element at index {tuple(map(int, i))}: {subject} {a[i]:.7g}, reference {r[i]:.7g}, "
            f"difference {a[i] - r[i]:.3g}")
    if limit is not None and metric in ("max_rel", "max_abs"):
        bound = limit * (float(np.max(np.abs(r))) if metric == "max_rel" else 1.0)
        over = int(np.sum(err > bound))
        line += f"; {over} of {err.size} elements ({over / err.size:.2%}) over the {metric} limit"
    return line


def _first_frames(value: np.ndarray, ref: np.ndarray, cents_limit: float, subject: str, show: int = 5) -> str:
    """The first frames where the pitch tracks disagree (voicing, or cents beyond the limit), with both in Hz."""
    est, r = np.asarray(value, dtype=np.float64).ravel(), np.asarray(ref, dtype=np.float64).ravel()
    both = (est > 0) & (r > 0)
    cents = np.zeros_like(r)
    cents[both] = np.abs(hz_to_cents(est[both]) - hz_to_cents(r[both]))
    frames = np.flatnonzero(((est > 0) != (r > 0)) | (cents > cents_limit))
    if frames.size == 0:
        return ""
    listed = ", ".join(f"{int(f)} ({subject} {est[f]:.2f} Hz, reference {r[f]:.2f} Hz)" for f in frames[:show])
    return f"{frames.size} frames disagree, first: {listed}"


def _local_worst(local: dict[str, Any]) -> str:
    """A teacher-forced result in a few words: the metric furthest over its limit, or the shape problem."""
    if "detail" in local:
        return local["detail"]
    over = [(local["mlx"][m] / lim if lim > 0 else math.inf, m, lim) for m, lim in local["limits"].items()]
    _, m, lim = max(over)
    return f"{m} {local['mlx'][m]:.3g} (limit {lim:.3g}, torch-fp32 {local['torch'][m]:.3g})"


def _judge_tensor(res: TapResult, value: np.ndarray, ref: np.ndarray, info: TapInfo, rule: Rule) -> None:
    res.mlx = tensor_metrics(value, ref)
    res.torch = dict(info.torch32)
    res.rule = rule
    for m in rule.metrics:
        t = float(res.torch.get(m, 0.0))
        res.checks.append(Check(m, float(res.mlx[m]), rule.limit(t), t))
    if not all(c.ok for c in res.checks):
        res.status = "fail"
        elementwise = next((c for c in res.checks if c.metric in ("max_rel", "max_abs")), None)
        res.where = worst_element(value, ref, limit=elementwise.limit if elementwise else None,
                                  metric=elementwise.metric if elementwise else "")


def _judge_pitch(res: TapResult, value: np.ndarray, ref: np.ndarray, policy: Policy,
                 ignore: np.ndarray | None) -> None:
    pm = pitch_metrics(value, ref, ignore)
    res.pitch = pm
    res.mlx = tensor_metrics(np.where(ref > 0, value, 0), ref)
    pr = policy.pitch
    problems = []
    if pm["cents_p99"] > pr.cents_p99:
        problems.append(f"cents error p99 {pm['cents_p99']:.3g} > {pr.cents_p99:g} on {pm['voiced_both']} frames "
                        "voiced in both")
    if pm["voicing_agreement"] < pr.voicing_agreement:
        n = round((1 - pm["voicing_agreement"]) * pm["frames"])
        problems.append(f"voicing differs on {n} of {pm['frames']} frames (agreement "
                        f"{pm['voicing_agreement']:.4%} < {pr.voicing_agreement:.4%})")
    if problems:
        res.status, res.detail = "fail", "; ".join(problems)
        res.where = _first_frames(value, ref, pr.cents_p99, "MLX")


def _nonfinite(value: np.ndarray, ref: np.ndarray) -> int:
    """How many MLX values are NaN or Inf where the reference's are finite."""
    if value.dtype.kind not in "fc":
        return 0
    return int(np.sum(~np.isfinite(value) & np.isfinite(ref)))


def _judge(res: TapResult, info: TapInfo, value: np.ndarray, refv: np.ndarray, ref: CaseData, policy: Policy,
           pitch_ignore: dict[str, np.ndarray] | None, subject: str = "MLX") -> None:
    if info.kind in ("tensor", "f0"):
        bad = _nonfinite(np.asarray(value), np.asarray(refv))
        if bad:
            res.status = "nonfinite"
            res.detail = f"{bad} of {value.size} {subject} values are NaN or Inf (the reference's are finite)"
            res.where = worst_element(value, refv, subject)
            return
    if info.kind == "tensor":
        _judge_tensor(res, value, refv, info, policy.rule(ref.component, info.name))
    elif info.kind == "f0":
        _judge_pitch(res, value, refv, policy, (pitch_ignore or {}).get(info.name))
    elif info.kind == "discrete":
        diff = int(np.sum(value != refv))
        res.mlx = {"mismatches": float(diff)}
        if diff:
            res.status, res.detail = "fail", f"{diff} of {value.size} discrete values differ"
            i = np.unravel_index(int(np.argmax(value != refv)), value.shape)
            res.where = f"first at index {tuple(map(int, i))}: {subject} {value[i]}, reference {refv[i]}"
    else:
        raise ValueError(f"tap {info.name}: unknown check kind {info.kind!r}")


def compare_case(ref: CaseData, values: dict[str, np.ndarray], policy: Policy,
                 pitch_ignore: dict[str, np.ndarray] | None = None, names: set[str] | None = None,
                 subject: str = "MLX") -> CaseResult:
    """Judge every reference tap (or those in `names`: missing, shape, tolerance / pitch / exact) in execution
    order; `subject` names the implementation judged in the details (MLX, or a foreign dump)."""
    results = []
    for info in ref.ordered():
        if names is not None and info.name not in names:
            continue
        res = TapResult(info.name, info.module_type, info.kind, info.order, info.shape)
        results.append(res)
        value = values.get(info.name)
        if value is None:
            res.status = "missing"
            res.detail = ("not recorded by the MLX model (its module path differs or it was not called; golden/"
                          "cases.toml says this path computes it)")
            continue
        if tuple(value.shape) != tuple(info.shape):
            res.status = "shape"
            res.detail = f"{subject} shape {tuple(value.shape)} vs reference {tuple(info.shape)} (PyTorch layout)"
            continue
        refv = ref.value(info.name)
        try:
            _judge(res, info, value, refv, ref, policy, pitch_ignore, subject)
        except Exception as e:  # a metric that cannot be computed fails this tap, never the whole check
            text = (str(e).strip().splitlines() or [""])[0]
            res.status, res.detail = "error", f"computing its metrics raised {type(e).__name__}: {text}"
    return CaseResult(ref.component, ref.case, ref.source, results, ref.input, ref.weights)
