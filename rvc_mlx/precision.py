"""Reduced precision: run a model's modules in float16 or bfloat16, with chosen modules kept in float32.

A module's dtype is that of its own weights; a module with weights casts its floating inputs to that dtype
when called, so a float32 module inside a float16 model really computes in float32 (and the next float16
module casts its result back). Modules without weights (containers, activations) compute in whatever dtype
reaches them. Three sources decide a module's dtype, strongest first:
  - the model's `FLOAT32` table (module-path glob -> one-line reason): the steps the original keeps in float32
    (front ends, F0 decoding, the NSF phase); never reduced;
  - `layers` (glob -> dtype) and `keep` (globs kept in float32): a mixed-precision plan, e.g. from
    golden/precision.toml (see `load_plan`);
  - the model's `dtype`.
A glob matches a module's path (relative to the model, as `named_modules()` names it) or one of its ancestors';
an array's dotted name (`cent_table`, `dec.m_source.l_linear.weight`) is matched the same way, so the table can
keep one array of a reduced module (a decoding constant) in float32.
Besides `__call__`, a layer's `PRECISION_ENTRY_POINTS` (methods that take the layer's input, e.g. a fused
`conv_bn_relu`) cast their floating arguments too.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from rvc_mlx.runtime import mx

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
REDUCED = ("float16", "bfloat16")
PLAN_FILE = Path(__file__).resolve().parents[1] / "golden" / "precision.toml"
PIPELINE = "pipeline"  # the plan file's end-to-end entry: a keep list per model of the pipeline


class PrecisionError(ValueError):
    """An unknown dtype, or a plan that does not fit its model."""


def dtype_name(dtype: Any) -> str:
    """'float16' for 'float16', mx.float16 or 'fp16'; a PrecisionError for anything else."""
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    if isinstance(dtype, str):
        name = aliases.get(dtype.lower(), dtype.lower())
    else:
        name = next((n for n, d in DTYPES.items() if d == dtype), repr(dtype))
    if name not in DTYPES:
        raise PrecisionError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class Plan:
    """A model's precision: `dtype` for everything but the modules in `keep` (float32) and in `layers`."""

    dtype: str = "float32"
    keep: tuple[str, ...] = ()
    layers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "keep", tuple(self.keep))
        object.__setattr__(self, "layers", {g: dtype_name(d) for g, d in dict(self.layers).items()})


def _ancestors(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def matches(path: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(a, g) for a in _ancestors(path) for g in globs)


def module_dtypes(model: Any, plan: Plan) -> dict[str, str]:
    """The dtype each module with weights computes in under `plan` (path -> dtype name); a glob of the plan
    that matches no module (nor array) is a PrecisionError (a plan for another model, or a renamed layer)."""
    modules = list(model.named_modules())
    globs = (*plan.keep, *plan.layers)
    names = [p for p, _ in modules if p] + [_array_name(p, k) for p, m in modules for k in own_arrays(m)] \
        if globs else []
    for glob in globs:
        if not any(matches(n, (glob,)) for n in names):
            raise PrecisionError(f"precision plan: {glob!r} matches no module of {type(model).__name__}")
    fixed = _fixed(model)
    return {path: _dtype_of(path, plan, fixed) for path, module in modules if own_arrays(module)}


def _fixed(model: Any) -> tuple[str, ...]:
    return tuple(getattr(model, "FLOAT32", {}))


def _dtype_of(name: str, plan: Plan, fixed: tuple[str, ...]) -> str:
    """The dtype of a module path or array name under `plan`: float32 for the model's table and `plan.keep`."""
    if matches(name, plan.keep) or matches(name, fixed):
        return "float32"
    dtype = plan.dtype
    for glob, d in plan.layers.items():
        if matches(name, (glob,)):
            dtype = d
    return dtype


def _array_name(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def own_arrays(module: Any) -> list[str]:
    """The names of `module`'s own floating arrays (not its children's): they set the dtype it computes in."""
    return [k for k, v in module.items() if isinstance(v, mx.array) and mx.issubdtype(v.dtype, mx.floating)]


def apply(model: Any, plan: Plan | str) -> Any:
    """Cast `model` (an mlx.nn.Module, in place) to `plan` (a Plan or a dtype name); returns the model."""
    plan = Plan(plan) if isinstance(plan, str) else plan
    dtypes = module_dtypes(model, plan)
    fixed = _fixed(model)
    classes: dict[type, type] = {}
    for path, module in model.named_modules():
        if path not in dtypes:
            continue
        dt = DTYPES[dtypes[path]]
        for key in own_arrays(module):
            # an array that the table (or the plan) names stays float32 in a reduced module (a decoding constant)
            module[key] = module[key].astype(dt if dt == mx.float32 else
                                             DTYPES[_dtype_of(_array_name(path, key), plan, fixed)])
        cls = type(module)
        if getattr(cls, "_casts_inputs", False):
            cls = cls.__bases__[0]
        if cls not in classes:  # same name: reports and recorders see the original class
            methods = {name: _casting_call(getattr(cls, name))
                       for name in ("__call__", *getattr(cls, "PRECISION_ENTRY_POINTS", ()))}
            classes[cls] = type(cls.__name__, (cls,), {**methods, "_casts_inputs": True,
                                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        module.__class__ = classes[cls]
        object.__setattr__(module, "_compute_dtype", dt)
    object.__setattr__(model, "_precision", plan)
    return model


def plan_of(model: Any) -> Plan:
    """The plan `apply` gave `model` (float32 if none)."""
    return getattr(model, "_precision", Plan())


def _cast(value: Any, dt: Any) -> Any:
    if isinstance(value, mx.array):
        return value.astype(dt) if mx.issubdtype(value.dtype, mx.floating) and value.dtype != dt else value
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":  # a kernel's host array (float32 modules)
        return mx.array(value).astype(dt)
    if type(value) in (list, tuple):
        return type(value)(_cast(v, dt) for v in value)
    if type(value) is dict:  # not a module (an mlx.nn.Module is a dict): a fused stage's BatchNorm stays itself
        return {k: _cast(v, dt) for k, v in value.items()}
    return value


def _casting_call(original: Any):
    """`original` (a method taking the module's inputs) casting its floating arguments to the module's dtype."""

    def call(self, *args, **kwargs):
        dt = self._compute_dtype
        if dt != mx.float32 or any(isinstance(a, mx.array) and a.dtype in (mx.float16, mx.bfloat16)
                                   for a in (*args, *kwargs.values())):
            args, kwargs = _cast(args, dt), _cast(kwargs, dt)
        return original(self, *args, **kwargs)

    call.__name__, call.__qualname__, call.__doc__ = original.__name__, original.__qualname__, original.__doc__
    return call


def as_float32(x: Any) -> Any:
    """x in float32 (a fragile step's input: F0 decoding, the NSF phase); unchanged when it already is."""
    if isinstance(x, mx.array) and x.dtype != mx.float32 and mx.issubdtype(x.dtype, mx.floating):
        return x.astype(mx.float32)
    return x


def host(x: mx.array) -> np.ndarray:
    """A float MLX array as numpy float32 (numpy has no bfloat16)."""
    return np.array(as_float32(x))


# ----------------------------------------------------------------------------------------------- plans on disk
def _entry(key: str, dtype: str, path: Path | None) -> dict:
    """The `[key.dtype]` table of the plan file (empty when the file or the entry is missing)."""
    path = PLAN_FILE if path is None else Path(path)
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PrecisionError(f"{path}: not valid TOML ({e})") from None
    return data.get(key, {}).get(dtype, {})


def load_plan(component: str, dtype: str, path: Path | None = None) -> Plan:
    """The mixed-precision plan of `component` in `dtype` from golden/precision.toml (`make precision` writes
    it): `dtype` plus the modules it keeps in float32; float32 for 'float32'. A missing file or entry gives
    the plain reduced-precision model."""
    dtype = dtype_name(dtype)
    if dtype == "float32":
        return Plan(dtype)
    keep = _entry(component, dtype, path).get("keep", ())
    if isinstance(keep, dict):
        raise PrecisionError(f"{component}'s {dtype} plan is per model: read it with pipeline_plan(model, dtype)")
    return Plan(dtype, tuple(keep))


def pipeline_plan(model: str, dtype: str, path: Path | None = None) -> Plan:
    """The plan `model` (hubert, synth, an f0 method) runs with inside a pipeline in `dtype`: the pipeline entry's
    (searched end to end, because the NSF phase integrates any F0 error, so the audio target needs more float32
    than each model's own target) where it names the model, else the model's own plan (`load_plan`)."""
    dtype = dtype_name(dtype)
    keep = _entry(PIPELINE, dtype, path).get("keep", {}) if dtype != "float32" else {}
    if model in keep:
        return Plan(dtype, tuple(keep[model]))
    return load_plan(model, dtype, path)


def configure(model: Any, component: str, dtype: Any = None, plan: Plan | None = None) -> Plan:
    """What a predictor's `from_checkpoint(dtype=, plan=)` does to its model: `plan` when given, else the
    committed plan of `component` in `dtype` (`load_plan`); neither leaves the model as loaded. A float32 plan
    that keeps nothing apart is not applied (the float32 path stays exactly as it is). Returns the plan."""
    if plan is not None:
        if dtype is not None and dtype_name(dtype) != plan.dtype:
            raise PrecisionError(f"dtype={dtype_name(dtype)!r} contradicts the plan's dtype {plan.dtype!r}")
    elif dtype is not None:
        plan = load_plan(component, dtype)
    if plan is None or plan == Plan():
        return plan_of(model)
    apply(model, plan)
    return plan
