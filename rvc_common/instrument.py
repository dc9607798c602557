"""Instrumentation the models carry, free when nothing observes: named taps, the layer-by-layer mode, which
implementation computed what (and where long work was split), and the MLX op profiler.

Model code (the MLX port and the PyTorch twins alike) imports only this module for it; the parity harness
(`rvc_mlx.testing`) builds its recorders on it. Pure Python: importing it loads no framework. An
observer never changes what runs: the path a user runs is the path a recording sees. Layer-by-layer mode is
separate and explicit (`with layers():`): it makes fused stages call each original layer in turn, for
localisation, and says so in every report.
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_OBSERVER: contextvars.ContextVar[Any] = contextvars.ContextVar("rvc_mlx_observer", default=None)
_LAYERS: contextvars.ContextVar[bool] = contextvars.ContextVar("rvc_mlx_layer_by_layer", default=False)


# ----------------------------------------------------------------------------------------------- observers
def observe(observer: Any) -> contextvars.Token:
    """Make `observer` receive taps (`extra`), implementations (`used`) and splits (`split`); returns the token
    for `stop_observing`."""
    return _OBSERVER.set(observer)


def stop_observing(token: contextvars.Token) -> None:
    _OBSERVER.reset(token)


def observer() -> Any:
    """The active observer (a tap recorder), or None."""
    return _OBSERVER.get()


def recording() -> bool:
    """True while an observer is active. Model code must not branch on it (an observer never changes the path)."""
    return _OBSERVER.get() is not None


def tap(name: str, value: Any, layout: str = "same") -> Any:
    """Record `value` under `name` if an observer is active (`layout` = the MLX layout); returns `value`."""
    obs = _OBSERVER.get()
    if obs is not None:
        obs.extra(name, value, layout)
    return value


def output(module: Any, value: Any) -> Any:
    """Report `value` as what `module` would have returned had it been called: a fused stage that computes a
    child module's output without calling it (the recorder names it by that module's path); returns `value`."""
    obs = _OBSERVER.get()
    if obs is not None and hasattr(obs, "module_output"):
        obs.module_output(module, value)
    return value


def used(implementation: str) -> None:
    """Tell the observer which implementation computes the current work, e.g. 'kernel conv2d+bn+relu avx2'."""
    obs = _OBSERVER.get()
    if obs is not None:
        obs.used(implementation)


def split(work: str, pieces: int) -> None:
    """Tell the observer that `work` (e.g. 'rmvpe mel chunks') ran in `pieces` pieces: proof that a case crossed
    the boundary it is meant to cross."""
    obs = _OBSERVER.get()
    if obs is not None:
        obs.split(work, pieces)


class Seen:
    """An observer that keeps the implementations (`used`) and splits (`split`) it is told of, taps ignored; as a
    context manager it observes the block: `with Seen() as seen: ...`, then `seen.impls`, `seen.splits`."""

    def __init__(self):
        self.impls: set[str] = set()
        self.splits: dict[str, int] = {}
        self._token: contextvars.Token | None = None

    def extra(self, name: str, value: Any, layout: str) -> None:
        pass

    def used(self, implementation: str) -> None:
        self.impls.add(implementation)

    def split(self, work: str, pieces: int) -> None:
        self.splits[work] = pieces

    def __enter__(self) -> "Seen":
        self._token = observe(self)
        return self

    def __exit__(self, *_: Any) -> None:
        stop_observing(self._token)


# ----------------------------------------------------------------------------------------------- layer mode
def layer_by_layer() -> bool:
    """True inside `layers()`: fused stages then call every original layer in turn (the localisation path)."""
    return _LAYERS.get()


@contextmanager
def layers(on: bool = True) -> Iterator[None]:
    """Run the block in layer-by-layer mode (or, with on=False, explicitly on the shipped path)."""
    token = _LAYERS.set(on)
    try:
        yield
    finally:
        _LAYERS.reset(token)


# ----------------------------------------------------------------------------------------------- profiler
OP_CLASSES = ("gemm", "conv", "elementwise", "recurrent", "fft")
_RULES = (  # first match on the lower-cased class name
    ("gru", "recurrent"), ("lstm", "recurrent"), ("stft", "fft"), ("mel", "fft"), ("spectrogram", "fft"),
    ("conv", "conv"), ("linear", "gemm"), ("embedding", "gemm"),
)


def profiled(method: Callable) -> Callable:
    """Marks a module method besides __call__ that the MLX profiler times as its module's op class: a fused
    kernel path that bypasses __call__ (its time would otherwise be charged to the caller's class)."""
    method.profiled = True
    return method


def _depthwise(module: Any) -> bool:
    groups = getattr(module, "groups", 1)
    if not isinstance(groups, int) or groups <= 1:
        return False
    if hasattr(module, "in_channels"):  # torch
        return groups == module.in_channels
    weight = module.get("weight") if hasattr(module, "get") else None  # MLX: (O, k, C / groups)
    return weight is not None and weight.shape[-1] == 1


def op_class(module: Any) -> str:
    """GEMM / conv / recurrent / FFT by class name; everything else is elementwise work.

    A depthwise conv (groups = channels) has no reduction over channels: per channel and tap it is a multiply-add
    over time, elementwise work in both frameworks (no GEMM), so it is counted as such."""
    if _depthwise(module):
        return "elementwise"
    name = type(module).__name__.lower()
    for key, cls in _RULES:
        if key in name:
            return cls
    return "elementwise"


class Clock:
    """A stack of running module timers that charges self time (total minus children) to op classes."""

    def __init__(self):
        self.self_time: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [start, child_time, op class]

    def enter(self, cls: str) -> None:
        self.stack.append([time.perf_counter(), 0.0, cls])

    def exit(self) -> None:
        start, child, cls = self.stack.pop()
        total = time.perf_counter() - start
        self.self_time[cls] += total - child
        if self.stack:
            self.stack[-1][1] += total

    def result(self, wall: float) -> dict[str, float]:
        out = {c: self.self_time.get(c, 0.0) for c in OP_CLASSES}
        out["elementwise"] += max(wall - sum(self.self_time.values()), 0.0)  # glue outside any module
        out["total"] = wall
        return out


def roots(root) -> list:
    return list(root) if isinstance(root, (list, tuple)) else [root]


def _mlx_modules(root) -> list:
    found = []
    for r in roots(root):
        r.apply_to_modules(lambda _name, m: found.append(m))
    return found


@contextmanager
def _patched_mlx(root, clock: Clock) -> Iterator[None]:
    import mlx.core as mx

    classes = {type(m) for m in _mlx_modules(root)}
    names = {c: ["__call__"] + [n for n in dir(c) if getattr(getattr(c, n, None), "profiled", False)]
             for c in classes}
    saved = {(c, n): c.__dict__.get(n) for c in classes for n in names[c]}
    for c, name in saved:
        original = getattr(c, name)

        def timed(self, *args, __original=original, **kwargs):
            mx.eval([a for a in list(args) + list(kwargs.values()) if isinstance(a, mx.array)])
            clock.enter(op_class(self))
            out = __original(self, *args, **kwargs)
            mx.eval([o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, mx.array)])
            clock.exit()
            return out

        setattr(c, name, timed)
    try:
        yield
    finally:
        for (c, name), fn in saved.items():
            if fn is None:
                delattr(c, name)
            else:
                setattr(c, name, fn)


def profile_mlx(root, run: Callable[[], Any]) -> dict[str, float]:
    """Seconds per op class for `run()` (which calls `root`: mlx.nn.Module(s)), plus 'total' wall time.

    Every module call is timed (inputs evaluated before the clock starts, outputs before it stops) and its self
    time (total minus its child modules) is charged to its op class; profiling adds a sync per module."""
    import mlx.core as mx

    clock = Clock()
    with _patched_mlx(root, clock):
        start = time.perf_counter()
        mx.eval(run())
        wall = time.perf_counter() - start
    return clock.result(wall)
