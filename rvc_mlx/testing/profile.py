"""Per-op-class time breakdown of one forward pass, MLX and PyTorch alike: where does each framework spend time?

Every module call is timed (MLX: inputs evaluated before the clock starts, outputs evaluated before it stops) and
its self time (total minus its child modules) is charged to an op class by the module's class name: GEMM
(Linear, Embedding), conv, recurrent (GRU/LSTM), FFT (STFT / mel front ends) or elementwise (norms, activations,
attention softmax, residual adds: whatever a module computes outside its GEMM/conv children). Profiling adds a
sync per module, so totals exceed an unprofiled run slightly; the benchmark ratios come from the unprofiled run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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


class _Clock:
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


def _roots(root) -> list:
    return list(root) if isinstance(root, (list, tuple)) else [root]


def _mlx_modules(root) -> list:
    found = []
    for r in _roots(root):
        r.apply_to_modules(lambda _name, m: found.append(m))
    return found


@contextmanager
def _patched_mlx(root, clock: _Clock) -> Iterator[None]:
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
    """Seconds per op class for `run()` (which calls `root`: mlx.nn.Module(s)), plus 'total' wall time."""
    import mlx.core as mx

    clock = _Clock()
    with _patched_mlx(root, clock):
        start = time.perf_counter()
        mx.eval(run())
        wall = time.perf_counter() - start
    return clock.result(wall)


def profile_torch(root, run: Callable[[], Any]) -> dict[str, float]:
    """Seconds per op class for `run()` (which calls `root`: torch.nn.Module(s)), plus 'total' wall time."""
    clock = _Clock()
    handles = []
    for m in {id(m): m for r in _roots(root) for m in r.modules()}.values():
        handles.append(m.register_forward_pre_hook(lambda mod, _inp: clock.enter(op_class(mod))))
        handles.append(m.register_forward_hook(lambda _mod, _inp, _out: clock.exit()))
    try:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    return clock.result(wall)
