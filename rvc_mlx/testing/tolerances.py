"""Tolerance policy: an MLX float32 tap may be at most K x PyTorch's own float32 error (both vs the float64
oracle) plus a small relative floor. Defaults and every override live in golden/tolerances.toml; an override
without a written reason is refused.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ToleranceError(ValueError):
    """golden/tolerances.toml is malformed or an override lacks a reason."""


@dataclass(frozen=True)
class Rule:
    """Bounds for one tap: per bounded metric, err_mlx <= K * err_torch + floor."""

    K: float
    floor: float
    metrics: tuple[str, ...]
    reason: str | None = None  # set for overrides

    def limit(self, torch_err: float) -> float:
        return self.K * torch_err + self.floor


@dataclass(frozen=True)
class Override:
    component: str
    taps: str
    K: float | None
    floor: float | None
    reason: str


@dataclass(frozen=True)
class PitchRule:
    """Acceptance for pitch tracks (taps of kind "f0")."""

    cents_p99: float
    voicing_agreement: float


@dataclass
class Policy:
    K: float = 4.0
    floor: float = 1e-6
    metrics: tuple[str, ...] = ("max_rel", "rmse_rel")
    pitch: PitchRule = field(default_factory=lambda: PitchRule(1.0, 1.0))
    overrides: list[Override] = field(default_factory=list)
    source: str = "<defaults>"

    def rule(self, component: str, tap: str) -> Rule:
        for o in self.overrides:
            if fnmatch.fnmatchcase(component, o.component) and fnmatch.fnmatchcase(tap, o.taps):
                return Rule(o.K if o.K is not None else self.K, o.floor if o.floor is not None else self.floor,
                            self.metrics, o.reason)
        return Rule(self.K, self.floor, self.metrics)

    def overrides_for(self, component: str) -> list[Override]:
        return [o for o in self.overrides if fnmatch.fnmatchcase(component, o.component)]


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ToleranceError(f"{path}: missing; restore it with `git checkout {path}`") from None
    except tomllib.TOMLDecodeError as e:
        raise ToleranceError(f"{path}: not valid TOML ({e})") from None
    pol = data.get("policy", {})
    pitch = data.get("pitch", {})
    policy = Policy(
        K=float(pol.get("K", 4.0)),
        floor=float(pol.get("floor", 1e-6)),
        metrics=tuple(pol.get("metrics", ("max_rel", "rmse_rel"))),
        pitch=PitchRule(float(pitch.get("cents_p99", 1.0)), float(pitch.get("voicing_agreement", 1.0))),
        source=str(path),
    )
    for i, o in enumerate(data.get("override", [])):
        where = f"{path}: override #{i + 1} ({o.get('component', '?')}/{o.get('taps', '?')})"
        reason = str(o.get("reason", "")).strip()
        if len(reason) < 20:
            raise ToleranceError(f"{where} has no written reason; say why the default policy cannot hold")
        if "component" not in o or "taps" not in o:
            raise ToleranceError(f"{where} needs both `component` and `taps` globs")
        unknown = set(o) - {"component", "taps", "K", "floor", "reason"}
        if unknown:
            raise ToleranceError(f"{where} has unknown fields {sorted(unknown)}")
        policy.overrides.append(Override(o["component"], o["taps"], _opt(o.get("K")), _opt(o.get("floor")), reason))
    return policy


def _opt(v) -> float | None:
    return None if v is None else float(v)
