"""Per-op-class time breakdown of one forward pass, MLX and PyTorch alike: where does each framework spend time?

The MLX profiler is part of the package (`rvc_common.instrument.profile_mlx`); this adds its PyTorch twin, with the
same op classes and the same self-time accounting: every module call is timed and its self time (total minus
its child modules) is charged to an op class by the module's class name: GEMM (Linear, Embedding), conv,
recurrent (GRU/LSTM), FFT (STFT / mel front ends) or elementwise (norms, activations, attention softmax, residual
adds: whatever a module computes outside its GEMM/conv children). Profiling adds a sync per module, so totals
exceed an unprofiled run slightly; the benchmark ratios come from the unprofiled run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rvc_common.instrument import OP_CLASSES, Clock, op_class, profile_mlx, roots

__all__ = ["OP_CLASSES", "op_class", "profile_mlx", "profile_torch"]


def profile_torch(root, run: Callable[[], Any]) -> dict[str, float]:
    """Seconds per op class for `run()` (which calls `root`: torch.nn.Module(s)), plus 'total' wall time."""
    clock = Clock()
    handles = []
    for m in {id(m): m for r in roots(root) for m in r.modules()}.values():
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
