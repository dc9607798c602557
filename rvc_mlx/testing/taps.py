"""Activation taps by module path for PyTorch (forward hooks) and MLX (a call recorder), plus named extra taps.

A tap is a module output (or input) recorded under the module's dotted path, e.g. `unet.encoder.layers.0`;
tuple outputs become `path:0`, `path:1`, nested `path:1.2`; a module called k > 1 times adds `path#k`.
Extra taps (`rmvpe.mel`) come from `rvc_common.instrument.tap(name, value)` calls inside model code and cost
nothing when no recorder is active. Both recorders store values in PyTorch's layout as numpy arrays; the MLX
recorder converts each value with the layout its `LayoutMap` names explicitly and never guesses from shapes.

The MLX recorder observes the path the model takes without it (the shipped path: fused kernels, host-array
stages, time chunks), or, when asked (`layer_by_layer=True`), runs the model in layer-by-layer mode. It also
notes which implementation computed each tap (`rvc_mlx.dispatch` reports them) and how long work was split.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from rvc_common import instrument
from rvc_common.instrument import recording, tap  # noqa: F401  (the harness's tests import them from here)


class TapError(Exception):
    """A tap could not be recorded or converted (unknown layout, rank mismatch, ...)."""


# ----------------------------------------------------------------------------------------------- layouts
# name -> (permutation MLX -> torch, rank). The inverse permutation maps torch -> MLX.
LAYOUTS: dict[str, tuple[tuple[int, ...] | None, int | None]] = {
    "same": (None, None),
    "NHWC": ((0, 3, 1, 2), 4),  # MLX (B, H, W, C)  <-> torch (B, C, H, W)
    "NLC": ((0, 2, 1), 3),  # MLX (B, L, C)     <-> torch (B, C, L)
}


def _permute(value: np.ndarray, layout: str, name: str, inverse: bool) -> np.ndarray:
    try:
        perm, rank = LAYOUTS[layout]
    except KeyError:
        raise TapError(f"tap {name!r}: unknown layout {layout!r} (known: {sorted(LAYOUTS)})") from None
    if perm is None:
        return value
    if value.ndim != rank:
        raise TapError(f"tap {name!r}: layout {layout} needs rank {rank}, got shape {tuple(value.shape)}")
    return np.transpose(value, tuple(int(i) for i in np.argsort(perm)) if inverse else perm)


def to_torch_layout(value: np.ndarray, layout: str, name: str) -> np.ndarray:
    """Convert an MLX-layout array to PyTorch's layout; the rank must be the layout's rank."""
    return _permute(value, layout, name, inverse=False)


def from_torch_layout(value: np.ndarray, layout: str, name: str) -> np.ndarray:
    """Convert a PyTorch-layout array to the MLX layout (inverse of `to_torch_layout`)."""
    return _permute(value, layout, name, inverse=True)


@dataclass(frozen=True)
class LayoutRule:
    """Tap-name glob -> the MLX layout of that module's output (and of its inputs, if different)."""

    pattern: str
    output: str
    inputs: str | tuple[str, ...] | None = None  # one layout for all inputs, or one per positional argument


@dataclass(frozen=True)
class LayoutMap:
    """Ordered rules; the first whose glob matches a tap's module path decides its layout."""

    rules: tuple[LayoutRule, ...]

    def _rule(self, path: str) -> LayoutRule:
        path = re.sub(r"#\d+", "", path)  # the k-th call of a module has its layout (a chunked model: `cnn#2`)
        for rule in self.rules:
            if fnmatch.fnmatchcase(path, rule.pattern):
                return rule
        raise TapError(f"no layout rule matches tap {path!r}; add one to the component's LayoutMap")

    def output(self, path: str) -> str:
        return self._rule(path).output

    def inputs(self, path: str) -> str | tuple[str, ...]:
        rule = self._rule(path)
        return rule.inputs or rule.output


# ----------------------------------------------------------------------------------------------- records
@dataclass
class TapRecord:
    """One recorded value in PyTorch layout; `order` is the completion order within the run."""

    name: str
    value: np.ndarray
    order: int
    module_type: str
    kind: str = "output"  # "output" | "extra"
    inputs: Any = None  # module inputs (PyTorch layout, tree of arrays) when recorded


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _flatten(name: str, value: Any, is_array: Callable[[Any], bool]) -> list[tuple[str, Any]]:
    """Tuple/list outputs -> `name:i`, nested `name:i.j`; non-array leaves are dropped."""
    if is_array(value):
        return [(name, value)]
    if isinstance(value, (tuple, list)):
        out = []
        sep = ":" if ":" not in name.rsplit(".", 1)[-1] else "."
        for i, v in enumerate(value):
            out.extend(_flatten(f"{name}{sep}{i}", v, is_array))
        return out
    return []


def tree_map(fn: Callable[[Any], Any], value: Any, is_array: Callable[[Any], bool]) -> Any:
    if is_array(value):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(tree_map(fn, v, is_array) for v in value)
    if isinstance(value, dict):
        return {k: tree_map(fn, v, is_array) for k, v in value.items()}
    return value


@dataclass
class Recorder:
    """Collects taps; `select` globs limit what is kept (None = everything); `inputs` also keeps inputs;
    `splits`: the most pieces each split work ran in (`instrument.split`)."""

    select: Sequence[str] | None = None
    inputs: bool = False
    records: dict[str, TapRecord] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    _calls: dict[str, int] = field(default_factory=dict)
    _token: Any = None

    def wanted(self, name: str) -> bool:
        return self.select is None or matches(name, self.select)

    def _call_name(self, path: str) -> str:
        n = self._calls.get(path, 0) + 1
        self._calls[path] = n
        return path if n == 1 else f"{path}#{n}"

    def _store(self, name: str, value: np.ndarray, module_type: str, kind: str, inputs: Any = None) -> None:
        if name in self.records:
            raise TapError(f"tap {name!r} recorded twice in one run; give the extra tap a unique name")
        self.records[name] = TapRecord(name, value, len(self.records), module_type, kind, inputs)

    # extra taps ---------------------------------------------------------------------------------------
    def extra(self, name: str, value: Any, layout: str) -> None:
        name = self._call_name(name)
        if self.wanted(name):
            # a copy: the model may change the array in place after tapping it (the original's `audio_opt /= max`)
            self._store(name, to_torch_layout(np.array(self.to_numpy(value)), layout, name), "tap", "extra")

    def to_numpy(self, value: Any) -> np.ndarray:  # pragma: no cover - overridden
        return np.asarray(value)

    def used(self, implementation: str) -> None:
        """An implementation report (`instrument.used`); the MLX recorder keeps them per tap."""

    def split(self, work: str, pieces: int) -> None:
        self.splits[work] = max(self.splits.get(work, 0), int(pieces))

    def activate(self) -> None:
        self._token = instrument.observe(self)

    def deactivate(self) -> None:
        if self._token is not None:
            instrument.stop_observing(self._token)
            self._token = None

    def values(self) -> dict[str, np.ndarray]:
        return {k: r.value for k, r in self.records.items()}


# ----------------------------------------------------------------------------------------------- torch
def _torch_is_array(v: Any) -> bool:
    return type(v).__name__ in ("Tensor", "Parameter") and hasattr(v, "detach")


def _torch_np(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy().copy()


class TorchRecorder(Recorder):
    """Forward hooks on every sub-module of `model` (paths as in its state dict) for a `with` block."""

    def __init__(self, model: Any, root: str = "model", select: Sequence[str] | None = None,
                 inputs: bool = False):
        super().__init__(select=select, inputs=inputs)
        self.model = model
        self.root = root
        self._handles: list[Any] = []

    def to_numpy(self, value: Any) -> np.ndarray:
        return _torch_np(value) if _torch_is_array(value) else np.asarray(value)

    def __enter__(self) -> "TorchRecorder":
        for path, module in self.model.named_modules():
            hook = self._hook(path or self.root, type(module).__name__)
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        self.activate()
        return self

    def _hook(self, path: str, module_type: str):
        def hook(module, args, kwargs, output):
            name = self._call_name(path)
            flat = _flatten(name, output, _torch_is_array)
            if not any(self.wanted(n) for n, _ in flat):
                return
            ins = tree_map(_torch_np, (args, kwargs), _torch_is_array) if self.inputs else None
            for n, v in flat:
                if self.wanted(n):
                    self._store(n, _torch_np(v), module_type, "output", ins)

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.deactivate()


# ----------------------------------------------------------------------------------------------- MLX
def _mlx_is_array(v: Any) -> bool:
    return type(v).__name__ == "array" and type(v).__module__.startswith("mlx")


def _mlx_or_host_array(v: Any) -> bool:
    """An MLX array, or a host array a kernel stage returns in its place (recorded as it is)."""
    return _mlx_is_array(v) or isinstance(v, np.ndarray)


def host_array(v: Any) -> np.ndarray:
    """An MLX (or host) array as numpy; float16 / bfloat16 as float32 (numpy has no bfloat16)."""
    if isinstance(v, np.ndarray):
        return v
    from rvc_mlx.precision import host

    return host(v)


@dataclass
class _Pending:
    name: str
    value: Any
    module_type: str
    kind: str
    layout: str
    in_layout: str | None = None
    inputs: Any = None


@dataclass(frozen=True)
class CallInfo:
    """How one tap was computed: the implementations its call used (`impl`, children included; `own`, outside its
    child modules) and the enclosing module call (`parent`). `reported`: a module output a fused stage of the
    parent computed without calling the module (`instrument.output`)."""

    module_type: str
    impl: tuple[str, ...]
    own: tuple[str, ...]
    parent: str | None
    reported: bool = False


@dataclass
class _Frame:
    name: str | None  # the call's tap name (None: outside any recorded module)
    own: set[str] = field(default_factory=set)  # used directly in this call
    total: set[str] = field(default_factory=set)  # own + finished children's
    since: set[str] = field(default_factory=set)  # used (here or in children) since this frame's last tap
    own_since: set[str] = field(default_factory=set)  # used here (not in children) since this frame's last tap


class MLXRecorder(Recorder):
    """Wraps `__call__` of every sub-module of an MLX `model` for a `with` block (MLX has no hooks).

    Each instance gets a recording subclass of its own class for the duration and is restored on exit.
    Values are evaluated once at exit and converted to PyTorch layout as `layouts` says. The block runs on the
    path the model takes unobserved, or in layer-by-layer mode with `layer_by_layer=True`. `calls` holds a
    CallInfo for every module call and extra tap (selected or not); `implementations()` all reported ones.
    """

    def __init__(self, model: Any, layouts: LayoutMap, root: str = "model",
                 select: Sequence[str] | None = None, inputs: bool = False, layer_by_layer: bool = False):
        super().__init__(select=select, inputs=inputs)
        self.model = model
        self.layouts = layouts
        self.root = root
        self.layer_by_layer = layer_by_layer
        self.calls: dict[str, CallInfo] = {}
        # in completion order: ("use", frame, implementation) and ("done", tap name): which work fed which tap
        self.events: list[tuple[str, str | None, str]] = []
        self._swapped: list[tuple[Any, type]] = []
        self._modules: dict[int, tuple[str, str]] = {}  # id -> (tap path, class name)
        self._pending: list[_Pending] = []
        self.layouts_used: dict[str, str] = {}  # tap -> the MLX layout it was converted from
        self._frames: list[_Frame] = [_Frame(None)]
        self._mode: Any = None

    @property
    def mode(self) -> str:
        return "layer-by-layer" if self.layer_by_layer else "shipped"

    def __enter__(self) -> "MLXRecorder":
        subclasses: dict[type, type] = {}
        for path, module in self.model.named_modules():
            cls = type(module)
            if cls not in subclasses:
                subclasses[cls] = type(f"Recording{cls.__name__}", (cls,), {"__call__": _recording_call(cls)})
            module.__class__ = subclasses[cls]
            self._swapped.append((module, cls))
            self._modules[id(module)] = (path or self.root, cls.__name__)
        self._mode = instrument.layers(self.layer_by_layer)  # explicit either way: never inherit a caller's mode
        self._mode.__enter__()
        self.activate()
        return self

    # implementation reports -------------------------------------------------------------------------
    def used(self, implementation: str) -> None:
        top = self._frames[-1]
        self.events.append(("use", top.name, implementation))
        top.own.add(implementation)
        top.total.add(implementation)
        top.since.add(implementation)
        top.own_since.add(implementation)

    def split(self, work: str, pieces: int) -> None:
        super().split(work, pieces)
        if pieces > 1:
            self.used(f"split: {work}")

    def implementations(self) -> set[str]:
        return set(self._frames[0].total)

    # calls -------------------------------------------------------------------------------------------
    def _enter_call(self, module: Any) -> None:
        known = self._modules.get(id(module))
        self._frames.append(_Frame(None if known is None else self._call_name(known[0])))

    def _exit_call(self, cls: type, args: tuple, kwargs: dict, output: Any) -> None:
        frame = self._frames.pop()
        parent = self._frames[-1]
        parent.total |= frame.total
        parent.since |= frame.total
        if frame.name is None:
            return
        info = CallInfo(cls.__name__, tuple(sorted(frame.total)), tuple(sorted(frame.own)), parent.name)
        self._output(frame.name, info, args, kwargs, output)

    def module_output(self, module: Any, value: Any) -> None:
        """`instrument.output`: a fused stage's value for a child module it did not call, under that module's
        path, computed by what the current call itself has used since its last tap."""
        known = self._modules.get(id(module))
        if known is None:
            return
        top = self._frames[-1]
        work = tuple(sorted(top.own_since))
        info = CallInfo(known[1], work, work, top.name, reported=True)
        top.since, top.own_since = set(), set()
        self._output(self._call_name(known[0]), info, (), {}, value, with_inputs=False)

    def _output(self, name: str, info: CallInfo, args: tuple, kwargs: dict, output: Any,
                with_inputs: bool = True) -> None:
        path = name.split("#")[0]
        self.calls[name] = info
        self.events.append(("done", name, ""))
        for n, v in _flatten(name, output, _mlx_or_host_array):
            self.calls[n] = info
            if self.wanted(n):
                ins = (args, kwargs) if self.inputs and with_inputs else None
                in_layout = self.layouts.inputs(path) if ins is not None else None
                if isinstance(in_layout, tuple):  # per-argument layouts: inputs are taken from the twin instead
                    ins = in_layout = None
                if isinstance(v, np.ndarray):  # a kernel's host array: copy it, whatever its owner does next
                    v = v.copy()
                self._pending.append(_Pending(n, v, info.module_type, "output", self.layouts.output(n),
                                              in_layout, ins))

    def extra(self, name: str, value: Any, layout: str) -> None:
        # Queued like module taps so completion order and evaluation stay in one place.
        name = self._call_name(name)
        top = self._frames[-1]
        self.calls[name] = CallInfo("tap", tuple(sorted(top.since)), tuple(sorted(top.since)), top.name)
        self.events.append(("done", name, ""))
        top.since, top.own_since = set(), set()
        if self.wanted(name):
            if isinstance(value, np.ndarray):  # host arrays can change in place before the run ends
                value = value.copy()
            self._pending.append(_Pending(name, value, "tap", "extra", layout))

    def __exit__(self, *exc) -> None:
        for module, cls in self._swapped:
            module.__class__ = cls
        self._swapped.clear()
        self.deactivate()
        self._mode.__exit__(*exc)
        if exc[0] is None:
            self._finish()

    def _finish(self) -> None:
        from rvc_mlx.runtime import mx

        mx.eval([p.value for p in self._pending if _mlx_is_array(p.value)])
        for p in self._pending:
            self.layouts_used[p.name] = p.layout
            value = to_torch_layout(host_array(p.value), p.layout, p.name)
            ins = p.inputs
            if ins is not None:
                ins = tree_map(lambda a, p=p: to_torch_layout(host_array(a), p.in_layout, p.name), ins,
                               _mlx_or_host_array)
            self._store(p.name, value, p.module_type, p.kind, ins)
        self._pending.clear()


def _recording_call(cls: type):
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        rec = instrument.observer()
        if not isinstance(rec, MLXRecorder):
            return original(self, *args, **kwargs)
        rec._enter_call(self)
        try:
            out = original(self, *args, **kwargs)
        except BaseException:
            rec._frames.pop()
            raise
        rec._exit_call(cls, args, kwargs, out)
        return out

    return __call__
