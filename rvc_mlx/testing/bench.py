"""Speed benchmarks of MLX vs the PyTorch twin: one pytest-benchmark entry per (component, length, framework).

Each entry's `extra_info` carries what the report needs: impl, audio seconds, real-time factor (median wall /
audio seconds), peak memory of the timed rounds (MLX: `mx.get_peak_memory`; torch: the process's resident-set
high-water mark above its level before the rounds, reset through /proc/self/clear_refs on Linux) and, for
profiled lengths, the per-op-class time breakdown of one extra forward (rvc_mlx.testing.profile).
"""

from __future__ import annotations

import gc
import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rvc_mlx.testing.components import GOLDEN

PROFILED_SECONDS = 10  # the length whose per-op-class breakdown goes into the report


def speech(seconds: float) -> np.ndarray:
    """The golden speech input tiled to `seconds` at 16 kHz (the benchmarks' common input)."""
    from rvc_mlx.testing.signals import read_wav

    return np.resize(read_wav(GOLDEN / "inputs" / "speech.wav"), int(seconds * 16000)).astype(np.float32)


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


class TorchPeak:
    """Resident-set high-water mark of this process during a block, above its resident size at the start."""

    def __enter__(self) -> "TorchPeak":
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            pass
        self.start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM")
        self.bytes = None if hwm is None or self.start is None else max(hwm - self.start, 0) * 1024


# --bench-spot-check (make parity): each entry timed once, with no op-class profile; torch skips the warm-up round
# past the first duration (the model is warm), MLX keeps it (it compiles its graphs per input shape). The table is
# a spot check of the ratios; `make bench` keeps medians of 3 and the profile.
SPOT_CHECK = False


def run(benchmark, impl: str, seconds: float, group: str, fn: Callable[[], Any], rounds: int = 3,
        warmup: int = 1, profile: Callable[[], dict[str, float]] | None = None,
        warm: Callable[[], Any] | None = None) -> Any:
    """Time `fn` (which must leave nothing lazy: MLX results evaluated inside) and record the report's fields.

    `warm`, when given, replaces the warm-up rounds: a short input through the same model pays the first-call costs
    (weight loading, kernel compilation) without a second minute-long untimed run of a 60 s input."""
    if SPOT_CHECK:
        rounds, profile = 1, None
        warmup, warm = (warmup if seconds <= 1 or impl == "mlx" else 0), None
    if warm is not None:
        warm()
        warmup = 0
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, seconds=seconds)
    if impl == "mlx":
        from rvc_mlx.runtime import mx

        gc.collect()
        mx.clear_cache()  # buffers cached for an earlier benchmark's sizes would only crowd out this one's
        mx.reset_peak_memory()
        result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup)
        peak = mx.get_peak_memory()
    else:
        with TorchPeak() as tp:
            result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup)
        peak = tp.bytes
    benchmark.extra_info["peak_memory_bytes"] = peak
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # absent when benchmarks are disabled (make test runs each once, untimed)
        benchmark.extra_info["rtf"] = stats.median / seconds
        if profile is not None and seconds == PROFILED_SECONDS:
            benchmark.extra_info["op_classes"] = profile()
    return result


def environment_line(env: dict[str, Any] | None) -> str:
    """What the timings depend on, in one line: CPU, vector ISA, kernel build, BLAS and its core type, threads."""
    if not env:
        return "machine: not recorded in this JSON (written without the rvc-mlx plugin)"
    isa = ", ".join(f for f in env.get("vector_isa", []) if f.startswith(("avx", "fma", "neon", "sve"))) or "none"
    threads = f"; torch threads {env['torch_threads']}" if "torch_threads" in env else ""
    steer = "".join(f"; {k}={v}" for k, v in env.get("variables", {}).items())
    return (f"machine: {env.get('cpu', '?')} ({env.get('cores', '?')} cores; {isa}); kernels {env.get('kernels')}; "
            f"MLX {env.get('mlx', '?')} on {env.get('mlx_device', '?')}; BLAS {env.get('blas', '?')}{threads}{steer}")


def print_table(path: str | Path) -> int:
    """Print the MLX/torch ratio table of a pytest-benchmark JSON (`make bench`)."""
    import json

    from rvc_mlx.testing.report import bench_table

    data = json.loads(Path(path).read_text())
    rows = bench_table(data)
    if not rows:
        print(f"{path}: no benchmarks")
        return 1
    print(environment_line((data.get("machine_info") or {}).get("rvc_mlx")))
    print(f"{'benchmark':32s} {'MLX s':>8s} {'torch s':>8s} {'MLX/torch':>9s} {'RTF MLX':>8s} {'RTF torch':>9s} "
          f"{'peak MiB MLX':>12s} {'peak MiB torch':>14s}")
    for r in rows:
        def f(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"
        mib = [None if r.get(k) is None else r[k] / 2**20 for k in ("mlx_peak", "torch_peak")]
        print(f"{r['group']:32s} {f(r.get('mlx_s'), '8.3f')} {f(r.get('torch_s'), '8.3f')} "
              f"{f(r.get('mlx_over_torch'), '9.2f')} {f(r.get('mlx_rtf'), '8.3f')} {f(r.get('torch_rtf'), '9.3f')} "
              f"{f(mib[0], '12.0f')} {f(mib[1], '14.0f')}")
    for r in rows:
        if r.get("mlx_vs_linear") is not None:
            print(f"cost growth {r['group'][:-4]}: 60 s / (6 x 10 s) = MLX {r['mlx_vs_linear']:.2f}, "
                  f"torch {f(r.get('torch_vs_linear'), '.2f')}")
    return 0


if __name__ == "__main__":
    sys.exit(print_table(sys.argv[1] if len(sys.argv) > 1 else "reports/bench.json"))
