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
from rvc_mlx.testing.metrics import pitch_metrics, tensor_metrics
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
    status: str = "pass"  # pass | fail | missing | shape
    mlx: dict[str, float] = field(default_factory=dict)
    torch: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    rule: Rule | None = None
    detail: str = ""
    pitch: dict[str, Any] | None = None
    local: dict[str, Any] | None = None  # teacher-forced result
    impl: tuple[str, ...] = ()  # the implementations that computed it (rvc_mlx.dispatch's reports)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def worst(self) -> Check | None:
        failing = [c for c in self.checks if not c.ok]
        return max(failing, key=lambda c: c.excess) if failing else None

    def describe(self) -> str:
        """One line: tap, module type, what failed and the tolerance it would need."""
        head = f"{self.name} ({self.module_type})"
        if self.status in ("missing", "shape") or (self.status == "fail" and self.kind != "tensor"):
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

    def blame_line(self) -> str:
        """One line: the first divergent tap of this path (or that all pass)."""
        b = self.blame
        if b is None:
            return f"{self.key} ({self.label}): all {len(self.taps)} taps pass"
        local = ""
        if b.local is not None:
            local = ("; teacher-forced it fails too (a local bug)" if not b.local["passed"]
                     else "; teacher-forced it passes (inherited error)")
        return f"{self.key} ({self.label}): first divergence at {b.describe()}{local}"

    def localisation_line(self) -> str | None:
        """The layer-by-layer run's verdict, for the line after the shipped path's `blame_line`."""
        lay = self.layers
        if lay is None:
            return None
        if lay.failing:
            return f"layer-by-layer ({lay.execution}): first divergence at {lay.blame.describe()}"
        head = f"layer-by-layer ({lay.execution}): all {len(lay.taps)} taps pass"
        return f"{head}: the fused path diverges inside {self.fused_block}" if self.failing else head

    def failure_message(self) -> str:
        lines = [self.blame_line()]
        if self.layers is not None:
            lines.append(self.localisation_line())
        lines += self.problems
        for r in (self, self.layers):
            if r is not None and r.failing:
                lines.append(f"failing taps on the {r.path} path ({len(r.failing)} of {len(r.taps)}), "
                             "execution order:")
                lines += [f"  {t.describe()}" for t in r.failing]
        return "\n".join(lines + self.notes)


def _judge_tensor(res: TapResult, value: np.ndarray, ref: np.ndarray, info: TapInfo, rule: Rule) -> None:
    res.mlx = tensor_metrics(value, ref)
    res.torch = dict(info.torch32)
    res.rule = rule
    for m in rule.metrics:
        t = float(res.torch.get(m, 0.0))
        res.checks.append(Check(m, float(res.mlx[m]), rule.limit(t), t))
    if not all(c.ok for c in res.checks):
        res.status = "fail"


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


def compare_case(ref: CaseData, values: dict[str, np.ndarray], policy: Policy,
                 pitch_ignore: dict[str, np.ndarray] | None = None, names: set[str] | None = None) -> CaseResult:
    """Judge every reference tap (or those in `names`: missing, shape, tolerance / pitch / exact) in execution
    order."""
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
            res.detail = f"MLX shape {tuple(value.shape)} vs reference {tuple(info.shape)} (PyTorch layout)"
            continue
        refv = ref.value(info.name)
        if info.kind == "tensor":
            _judge_tensor(res, value, refv, info, policy.rule(ref.component, info.name))
        elif info.kind == "f0":
            _judge_pitch(res, value, refv, policy, (pitch_ignore or {}).get(info.name))
        elif info.kind == "discrete":
            diff = int(np.sum(value != refv))
            res.mlx = {"mismatches": float(diff)}
            if diff:
                res.status, res.detail = "fail", f"{diff} of {value.size} discrete values differ"
        else:
            raise ValueError(f"tap {info.name}: unknown check kind {info.kind!r}")
    return CaseResult(ref.component, ref.case, ref.source, results, ref.input, ref.weights)
