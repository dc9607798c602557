"""The one place that chooses how each op runs here: a C++ kernel (built per ISA), a GEMM formulation in
`layers.py`, or MLX's own op; transcendentals from MLX or from `fastmath`'s polynomials; and how long work is split
into chunks.

Kernels: `rvc_mlx._kernels_<isa>` for avx512 (AVX-512 F/DQ/BW/VL + FMA), avx2 (AVX2 + FMA) and generic (the
compiler's baseline), built by `pip install -e .` on Linux. The widest build this CPU runs is chosen by CPUID
(`rvc_mlx._cpu`, a baseline build, is asked before any variant is loaded). Forced with:
  RVC_MLX_KERNELS=0        or `use_kernels(False)` / `set_kernels(False)`: no C++ kernels (the GEMM formulations
                           and MLX's ops; with RVC_MLX_MATH=mlx, the pure-MLX path macOS and MLX's GPU run)
  RVC_MLX_ISA=avx2         or `use_isa("avx2")`: that build (an error if this CPU cannot run it)
  RVC_MLX_MATH=mlx         or `use_math("mlx")`: MLX's exp/erf/tanh/sigmoid (the default off Linux, where they are
                           vectorised) instead of fastmath's polynomials (the default on Linux: ~10x faster there)
Every choice is reported to an active observer (`instrument.used`), so a parity report names the implementation
that computed each tap. Chunk sizes (HuBERT's attention queries, the synthesizer's resblock time chunks) are
exact by construction; `use_chunks` sets them small so that short test inputs cross the boundaries.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from rvc_common import instrument
from rvc_mlx import _blas
from rvc_mlx.runtime import mx

VARIANTS = ("avx512", "avx2", "generic")  # widest first
NEEDS = {"avx512": ("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"), "avx2": ("avx2", "fma"),
         "generic": ()}

# Implementation families (reports name a path by its family: 'kernel conv2d avx2', 'gemm conv1d 1x1', 'mlx gru ...').
KERNEL, GEMM, MLX = "kernel", "gemm", "mlx"
MATH = ("mlx", "fastmath")  # transcendental functions: MLX's own, or fastmath's compiled polynomials


class KernelError(RuntimeError):
    """RVC_MLX_KERNELS / RVC_MLX_ISA / a device (or the Python API) ask for something this machine cannot run."""


@dataclass(frozen=True)
class Settings:
    """What the caller forces: kernels on/off, a kernel build, transcendentals, chunk sizes (None = defaults)."""

    kernels: bool = True
    isa: str | None = None
    math: str | None = None  # "mlx" | "fastmath" transcendentals (None: fastmath on Linux, MLX's elsewhere)
    attention_rows: int | None = None  # HuBERT attention: query rows per chunk
    resblock_frames: int | None = None  # synthesizer resblock stages: frames per time chunk


def _from_environment() -> Settings:
    raw = os.environ.get("RVC_MLX_KERNELS", "1").strip().lower()
    if raw not in ("0", "1", "off", "on", "false", "true", ""):
        raise KernelError(f"RVC_MLX_KERNELS={raw!r}: use 1 (kernels where built) or 0 (no kernels)")
    isa = os.environ.get("RVC_MLX_ISA", "").strip().lower() or None
    if isa is not None and isa not in VARIANTS:
        raise KernelError(f"RVC_MLX_ISA={isa!r}: choose one of {', '.join(VARIANTS)}")
    math = os.environ.get("RVC_MLX_MATH", "").strip().lower() or None
    if math is not None and math not in MATH:
        raise KernelError(f"RVC_MLX_MATH={math!r}: choose one of {', '.join(MATH)}")
    return Settings(kernels=raw not in ("0", "off", "false"), isa=isa, math=math)


_SETTINGS: ContextVar[Settings | None] = ContextVar("rvc_mlx_dispatch", default=None)


def settings() -> Settings:
    """The settings in force: RVC_MLX_KERNELS / RVC_MLX_ISA / RVC_MLX_MATH (read on first use: a bad value is a
    one-line KernelError there, not at import), as the Python API changed them."""
    s = _SETTINGS.get()
    if s is None:
        s = _from_environment()
        _SETTINGS.set(s)
    return s


@contextmanager
def _using(**changes) -> Iterator[None]:
    token = _SETTINGS.set(replace(settings(), **changes))
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def use_kernels(on: bool) -> Any:
    """Context manager: run the block with the C++ kernels (where built) or without them."""
    return _using(kernels=bool(on))


def use_isa(isa: str | None) -> Any:
    """Context manager: run the block on the kernel build `isa` (None: the widest this CPU runs)."""
    if isa is not None:
        _check_isa(isa)
    return _using(isa=isa)


def use_math(kind: str | None) -> Any:
    """Context manager: transcendentals from MLX ('mlx') or fastmath's polynomials ('fastmath'); None: default."""
    if kind is not None and kind not in MATH:
        raise KernelError(f"unknown transcendentals {kind!r}; choose one of {', '.join(MATH)}")
    return _using(math=kind)


def use_chunks(attention_rows: int | None = None, resblock_frames: int | None = None) -> Any:
    """Context manager: split HuBERT's attention into `attention_rows`-query chunks and the synthesizer's resblock
    stages into `resblock_frames`-frame chunks (the same code as the defaults, smaller constants)."""
    for name, v in (("attention_rows", attention_rows), ("resblock_frames", resblock_frames)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return _using(attention_rows=attention_rows, resblock_frames=resblock_frames)


def set_kernels(on: bool) -> None:
    """Process-wide (this context's) default: kernels on or off, as RVC_MLX_KERNELS."""
    _SETTINGS.set(replace(settings(), kernels=bool(on)))


# ----------------------------------------------------------------------------------------------- kernel builds
@lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """ISA features this CPU (and OS) supports, by CPUID; empty without rvc_mlx._cpu (then only 'generic')."""
    try:
        from rvc_mlx import _cpu
    except ImportError:
        return frozenset()
    return frozenset(_cpu.features())


@lru_cache(maxsize=None)
def built() -> tuple[str, ...]:
    """Kernel builds present in this install, widest first."""
    return tuple(v for v in VARIANTS if importlib.util.find_spec(f"rvc_mlx._kernels_{v}") is not None)


def runnable() -> tuple[str, ...]:
    """Kernel builds present and supported by this CPU, widest first."""
    have = cpu_features()
    return tuple(v for v in built() if all(f in have for f in NEEDS[v]))


def _check_isa(isa: str) -> None:
    if isa not in VARIANTS:
        raise KernelError(f"unknown kernel build {isa!r}; choose one of {', '.join(VARIANTS)}")
    if isa not in built():
        raise KernelError(f"the {isa} kernel build is not installed (built here: {', '.join(built()) or 'none'}); "
                          "reinstall with `pip install -e .` and a C++ compiler")
    missing = [f for f in NEEDS[isa] if f not in cpu_features()]
    if missing:
        raise KernelError(f"this CPU cannot run the {isa} kernels (it lacks {', '.join(missing)}); runnable here: "
                          f"{', '.join(runnable()) or 'none'}")


@lru_cache(maxsize=None)
def _load(isa: str) -> Any:
    return importlib.import_module(f"rvc_mlx._kernels_{isa}")


def _resolve(s: Settings) -> tuple[str | None, Any]:
    """(kernel build, its module) for settings `s`, kept on the (immutable) settings object: asked per op call."""
    resolved = s.__dict__.get("_resolved")
    if resolved is None:
        if not s.kernels:
            isa = None
        elif s.isa is not None:
            _check_isa(s.isa)
            isa = s.isa
        else:
            options = runnable()
            isa = options[0] if options else None
        resolved = (isa, None if isa is None else _load(isa))
        object.__setattr__(s, "_resolved", resolved)
    return resolved


def variant() -> str | None:
    """The kernel build the current settings run (None: kernels off, or none runs on this machine)."""
    return _resolve(settings())[0]


def kernels() -> Any:
    """The kernel module of `variant()`, or None."""
    return _resolve(settings())[1]


def lanes() -> int:
    """Float32 lanes of the active kernel build's vectors (channels an epilogue needs in whole multiples of)."""
    return kernels().LANES


def status() -> str:
    """One line: which kernel build runs (or why none does), and whose transcendentals."""
    try:
        isa = variant()
        math = f"; transcendentals: {'MLX' if mlx_math() else 'fastmath'}"
    except KernelError as e:
        return f"kernels unusable: {e}"
    if isa is not None:
        forced = " (forced by RVC_MLX_ISA / use_isa)" if settings().isa else ""
        return f"kernels {isa} ({_load(isa).LANES}-lane float32 vectors){forced}; built: {', '.join(built())}{math}"
    if not settings().kernels:
        return f"kernels off (RVC_MLX_KERNELS=0 / use_kernels(False)){math}"
    if not built():
        return f"kernels not built{math}"
    return f"no kernel build runs on this CPU (built: {', '.join(built())}){math}"


def mlx_math() -> bool:
    """Whether transcendentals are MLX's own ops (else fastmath's polynomials)."""
    kind = settings().math
    return not sys.platform.startswith("linux") if kind is None else kind == "mlx"


def transcendental(op: str, x: mx.array | None = None) -> bool:
    """Whether `op` (exp, erf, tanh, sigmoid, silu, gelu, softmax) runs as MLX's own op; reported either way.
    fastmath's polynomials are float32 forms (Cody-Waite split, float32 exponent bits): an `x` in float16 or
    bfloat16 always takes MLX's op (whose softmax accumulates in float32: `precise=True`)."""
    native = mlx_math() or x is not None and x.dtype != mx.float32
    _report(MLX if native else "fastmath", op)
    return native


def vectorised(op: str, x: mx.array, channels: int | None = None, weights: tuple = ()) -> bool:
    """Whether a C++ kernel runs `op` (softmax, gelu, [conv1d+]groupnorm+gelu) on x in vectorised passes: `fused`'s rule
    (kernels on, float32, MLX's CPU device; channels in whole vectors, float32 weights, where given) and fastmath's
    transcendentals chosen (the kernels compute its polynomials). MLX's Linux build has no vector elementwise ops:
    even fastmath's compiled polynomials run one scalar pass per op. Reported when it does (else `transcendental`
    or the caller's fallback chooses and reports)."""
    return not mlx_math() and fused(x, op, channels, weights)


def execution() -> str:
    """What computes now: 'kernels avx2, fastmath' (Linux's default), 'pure MLX' (no kernels, MLX's
    transcendentals: what macOS runs), 'no kernels, fastmath' ...; and the device when it is not the CPU."""
    isa = variant()
    math = "MLX transcendentals" if mlx_math() else "fastmath"
    what = "pure MLX" if isa is None and mlx_math() else f"{'kernels ' + isa if isa else 'no kernels'}, {math}"
    device = mx.default_device()
    return what + ("" if device == mx.cpu else f", MLX {device}")


def use_device(name: str) -> None:
    """Make MLX's default device 'cpu' or 'gpu' (Metal on macOS, CUDA with mlx[cuda]); a one-line KernelError
    where MLX has no GPU. The C++ kernels are CPU-only: on the GPU every op is MLX's own."""
    if name not in ("cpu", "gpu"):
        raise KernelError(f"unknown MLX device {name!r}; choose cpu or gpu")
    device = mx.cpu if name == "cpu" else mx.gpu
    if not mx.is_available(device):
        raise KernelError("no MLX GPU here: this MLX build has no GPU backend (Linux's mlx[cpu]); use macOS (Metal) "
                          "or mlx[cuda] with an NVIDIA GPU, or --mlx-device cpu")
    mx.set_default_device(device)


def check() -> None:
    """A one-line KernelError if the settings (RVC_MLX_KERNELS / RVC_MLX_ISA / RVC_MLX_MATH) cannot be met here."""
    variant()
    mlx_math()


# ----------------------------------------------------------------------------------------------- choices
def _report(impl: str, op: str) -> str:
    if instrument.recording():  # (labels cost a few us: only when someone observes)
        instrument.used(f"kernel {op} {variant()}" if impl == KERNEL else f"{impl} {op}")
    return impl


def kernel_for(x: mx.array | np.ndarray, channels: int | None = None) -> bool:
    """Whether a kernel can run an op on x: kernels on and runnable, MLX's CPU device, float32 (an MLX array or
    a host array a kernel wrote); with `channels`, only if they fill whole vectors (what an epilogue, a host-array
    output and the depthwise kernel need)."""
    float32 = x.dtype == np.float32 if isinstance(x, np.ndarray) else x.dtype == mx.float32
    k = kernels()
    if k is None or not float32 or mx.default_device() != mx.cpu:
        return False
    return channels is None or channels % k.LANES == 0


def blas_on_host() -> bool:
    """Whether MLX's BLAS is one whose cblas_sgemm `host_gemm` can call on host buffers (OpenBLAS, loaded by
    rvc_mlx._blas)."""
    return _blas.cblas_sgemm() is not None


# Thresholds the table below reads (each measured where it was set: README, Speed).
NATIVE_CONV2D_CHANNELS = 64  # MLX's im2col conv2d wins from this many input channels ...
NATIVE_CONV2D_MAX_PIXELS = 2048  # ... on images this small (RMVPE's bottom)
THIN_GEMM_OUTPUTS = 32  # OpenBLAS runs a 1x1 conv with this few outputs at about half the kernel's speed
LINEAR_MIN_CHANNELS = 256  # a 1x1 Conv1d on gemm.cpp from this many inputs (FCPE's 512-1024; the synthesizer's
# 96-192 ran 7% slower there than on OpenBLAS)


@dataclass(frozen=True)
class Path:
    """One way an op can run: `name` is what the layer runs ("kernel", "mlx" or a GEMM formulation, "gemm ..."),
    `label` the op as reports name it, `when` the condition on the call's facts, `why` the reason in one line."""

    name: str
    label: str
    when: Callable[[Any], bool]
    why: str


# The one table of implementation choices: per op, the paths in order; the first whose condition holds runs.
# Facts: kernel (a kernel build runs x: float32, CPU), kernel_vec (and the channels fill whole vectors).
TABLE: dict[str, tuple[Path, ...]] = {
    "conv2d": (
        Path("mlx", "conv2d", lambda f: not f.simple, "stride, dilation or groups other than 1: MLX's conv only"),
        Path("kernel", "conv2d", lambda f: f.kernel and f.nonempty and (not f.pointwise or f.o <= THIN_GEMM_OUTPUTS),
             "direct conv, its accumulators in registers over the whole reduction (a wide 1x1 is one GEMM)"),
        Path("mlx", "conv2d", lambda f: f.c == 1 or f.c >= NATIVE_CONV2D_CHANNELS
             and f.pixels <= NATIVE_CONV2D_MAX_PIXELS, "im2col + one GEMM wins for one input channel, and for wide "
             "inputs on small images"),
        Path("gemm 1x1", "conv2d 1x1", lambda f: f.pointwise, "a 1x1 conv is one GEMM"),
        Path("gemm shifted", "conv2d shifted", lambda f: True,
             "kh*kw shifted GEMMs on flattened rows: MLX's CPU conv is several times slower on thin convs"),
    ),
    "conv1d": (
        Path("kernel grouped", "conv1d grouped", lambda f: f.groups != 1 and not f.depthwise and f.stride == 1
             and f.dilation == 1 and f.kernel_groups, "each group a batch of the direct conv kernel (outputs per "
             "group in whole vectors): MLX's grouped conv runs on one core"),
        Path("mlx", "conv1d", lambda f: f.groups != 1 and not f.depthwise or f.stride != 1
             and (f.depthwise or f.dilation != 1), "grouped (not depthwise), or strided and dilated: MLX's conv only"),
        Path("kernel depthwise", "depthwise1d", lambda f: f.depthwise and f.stride == 1 and f.dilation == 1
             and f.kernel_vec, "depthwise kernel: whole vectors of channels in one pass"),
        Path("gemm multiply-adds", "depthwise1d multiply-adds", lambda f: f.depthwise,
             "per-channel taps as fused multiply-adds: MLX's grouped conv is several times slower"),
        Path("kernel", "conv1d", lambda f: f.k > 1 and f.stride == 1 and f.kernel,
             "direct conv kernel for k > 1 taps (dilated ones too)"),
        Path("gemm strided host", "conv1d strided host", lambda f: f.stride != 1 and f.k % f.stride and f.host_blas,
             "the folded GEMMs below on the buffers in place: MLX's matmul first copies the last tap's partial rows "
             "(k mod s frames of each s), at a few GB/s"),
        Path("gemm strided", "conv1d strided", lambda f: f.stride != 1,
             "stride s as a stride-1 conv over frames folded s at a time (a free reshape)"),
        Path("kernel linear", "conv1d 1x1 linear", lambda f: f.k == 1 and f.groups == 1 and f.stride == 1
             and f.linear_kernel, "a pointwise conv is a Linear layer: gemm.cpp, the weights packed once (MLX's "
             "matmul runs on OpenBLAS, whose kernels an OPENBLAS_CORETYPE may narrow)"),
        Path("gemm 1x1", "conv1d 1x1", lambda f: f.k == 1,
             "a pointwise conv is one GEMM (OpenBLAS's blocked sum keeps the attention logits' rounding)"),
        Path("gemm shifted", "conv1d shifted", lambda f: True,
             "k shifted GEMMs accumulated by addmm: MLX's dilated conv is far slower"),
    ),
    "conv_transpose": (
        Path("mlx", "{op}", lambda f: f.dilated, "dilation: MLX's transposed conv only"),
        Path("kernel", "{op}", lambda f: f.kernel, "one direct conv per output phase"),
        Path("gemm overlap-add", "{op} overlap-add", lambda f: True,
             "one GEMM + phase-wise overlap-add: MLX's CPU transposed conv is far slower"),
    ),
    "conv2d (k,1)": (  # CREPE's tall convs (MLX's single GEMM over k*C loses torch's accuracy)
        Path("kernel", "conv2d (k,1)", lambda f: f.kernel, "direct conv kernel, each frame one row of pixels: taps "
             "summed in passes of 8 x 32 channels in registers; the GEMMs below re-read their whole output per tap"),
        Path("gemm per-tap", "conv2d (k,1) per-tap", lambda f: f.length > 2 * f.outputs,
             "short outputs: 2-D GEMMs of each tap's rows (a batched GEMM of tiny matrices is slow)"),
        Path("gemm folded", "conv2d (k,1) folded", lambda f: True,
             "frames folded into GEMM rows, block-Toeplitz taps: wide GEMMs instead of thin ones"),
    ),
    "attention": (  # HuBERT's multi-head self-attention: softmax(q k^T * scale) v per head
        Path("kernel", "attention", lambda f: f.kernel, "scores, softmax and output of a head's block of query rows "
             "while the scores are in cache; MLX threads 12 thin GEMMs one by one and stores the (T, T) scores"),
        Path("mlx chunked", "attention query chunks", lambda f: f.rows < f.frames,
             "long inputs: query rows in chunks (softmax is per row), so that the scores stay in cache, not 430 MB"),
        Path("mlx", "attention", lambda f: True, "the whole score matrix at once (it also gives the weights)"),
    ),
    "linear": (
        Path("kernel", "linear", lambda f: f.kernel and f.panels and f.rows,
             "weights packed once as panels of output columns, x once per call, no bias broadcast into the output "
             "(MLX's addmm repacks both and copies the bias first): HuBERT ran 1-4% faster"),
        Path("mlx", "linear", lambda f: True, "MLX's addmm (OpenBLAS)"),
    ),
    "gru": (
        Path("kernel", "gru", lambda f: f.kernel, "vectorised GEMV + gates per step, both directions at once"),
        Path("gemm numpy scan", "gru numpy scan", lambda f: f.cpu,
             "the recurrence in numpy on the host: MLX's per-op dispatch costs more than a whole step"),
        Path("mlx", "gru compiled steps", lambda f: True, "other devices: compiled MLX steps"),
    ),
}


def choose(op: str, /, **facts: Any) -> str:
    """The first path of TABLE[op] whose condition holds for `facts`; reported to an active observer."""
    f = SimpleNamespace(**facts)
    for path in TABLE[op]:
        if path.when(f):
            _report(path.name.split()[0], path.label.format(op=facts.get("op", op)))
            return path.name
    raise AssertionError(f"dispatch.TABLE[{op!r}] has no path for {facts}")  # the last rows always hold


def conv2d(x: mx.array, weight_shape: tuple[int, ...], padding: tuple[int, int], simple: bool) -> str:
    """Conv2d of NHWC x (weight (O, kh, kw, C)); `simple`: stride, dilation and groups all 1."""
    o, kh, kw, c = weight_shape
    return choose("conv2d", simple=simple, kernel=kernel_for(x), nonempty=_nonempty(x, weight_shape, padding),
                  pointwise=(kh, kw) == (1, 1), o=o, c=c, pixels=x.shape[1] * x.shape[2])


def conv2d_epilogue(x: mx.array | np.ndarray, weight_shape: tuple[int, ...], padding: tuple[int, int],
                    simple: bool, epilogue: str) -> bool:
    """Whether the conv kernel runs a conv2d with `epilogue` (e.g. '+bn+relu+add') fused into it (O in whole
    vectors); otherwise the caller runs the conv (its own choice), then the epilogue as one compiled MLX pass."""
    if simple and _nonempty(x, weight_shape, padding) and kernel_for(x, weight_shape[0]):
        _report(KERNEL, "conv2d" + epilogue)
        return True
    _report(MLX, "compiled " + epilogue)
    return False


def _nonempty(x, weight_shape: tuple[int, ...], padding: tuple[int, int]) -> bool:
    _, kh, kw, _ = weight_shape
    return x.shape[1] + 2 * padding[0] - kh + 1 >= 1 and x.shape[2] + 2 * padding[1] - kw + 1 >= 1


def tap_conv2d(x: mx.array, length: int, outputs: int) -> str:
    """CREPE's (k, 1) convs of x over `length` input frames giving `outputs` frames."""
    return choose("conv2d (k,1)", length=length, outputs=outputs, kernel=kernel_for(x))


def conv1d(x: mx.array, weight_shape: tuple[int, ...], groups: int, stride: int, dilation: int,
           float32_weights: bool = True) -> str:
    """Conv1d of NLC x (weight (O, k, C / groups)). Host GEMMs (`host_gemm`) run where the kernels do, on float32
    weights, with OpenBLAS as MLX's BLAS."""
    o, k, c = weight_shape
    kernel = kernel_for(x)
    host_blas = groups == 1 and dilation == 1 and float32_weights and kernel and blas_on_host()
    return choose("conv1d", groups=groups, depthwise=groups == o == x.shape[-1] and c == 1, stride=stride,
                  dilation=dilation, k=k, kernel=kernel, kernel_vec=kernel_for(x, o),
                  kernel_groups=groups > 1 and kernel_for(x, o // groups), host_blas=host_blas,
                  linear_kernel=kernel and float32_weights and o % (2 * lanes()) == 0 and c >= LINEAR_MIN_CHANNELS
                  and x.size > 0)


def fused(x: mx.array | np.ndarray, op: str, channels: int | None = None, weights: tuple = ()) -> bool:
    """Whether the fused kernel `op` (e.g. 'depthwise1d+glu+silu', 'conv1d+leaky+add') runs on x with `weights`
    (a stage of several layers: all float32, or a mixed-precision plan's half layer takes MLX's ops); reported
    when it does (the caller's fallback reports its own ops)."""
    if kernel_for(x, channels) and all(w.dtype == mx.float32 for w in weights):
        _report(KERNEL, op)
        return True
    return False


def conv_transpose(x: mx.array, dilation: int | tuple[int, int], one_d: bool) -> str:
    """Transposed conv of x (1-D or 2-D)."""
    return choose("conv_transpose", op="conv_transpose1d" if one_d else "conv_transpose2d",
                  dilated=dilation not in (1, (1, 1)), kernel=kernel_for(x))


def float64_sum(x: mx.array, op: str, weights: tuple = ()) -> bool:
    """Whether a sum whose error the model amplifies accumulates in float64 (`op`: the synthesizer's prior
    projection): float32 input and `weights` (a half-precision plan's layer keeps its dtype) on MLX's CPU device,
    where MLX has float64 (its GPU backends do not)."""
    if x.dtype == mx.float32 and all(w.dtype == mx.float32 for w in weights) and mx.default_device() == mx.cpu:
        _report(GEMM, op + " float64")
        return True
    return False


def attention(q: mx.array, heads: int, head_dim: int, layers: bool) -> tuple[str, int]:
    """HuBERT's attention of q (B, T, heads * head_dim): the path, and its query rows per chunk (per kernel work
    item, or per MLX chunk; >= T: one chunk). `layers`: the layer-by-layer mode (MLX's ops, the whole matrix)."""
    b, t, _ = q.shape
    rows = settings().attention_rows
    kernel = not layers and kernel_for(q) and head_dim % (2 * lanes()) == 0
    if kernel:
        rows = rows if rows is not None else ATTENTION_KERNEL_ROWS
    elif layers:
        rows = t
    else:
        rows = attention_rows(b, heads, t)
    return choose("attention", kernel=kernel, rows=rows, frames=t), rows


def linear(x: mx.array, weight: mx.array) -> str:
    """A Linear layer (weight (out, in)) of x (..., in)."""
    kernel = kernel_for(x) and weight.dtype == mx.float32
    return choose("linear", kernel=kernel, panels=kernel and weight.shape[0] % (2 * lanes()) == 0, rows=x.size > 0)


def gru(x: mx.array) -> str:
    """The GRU recurrence over x."""
    return choose("gru", kernel=kernel_for(x), cpu=mx.default_device() == mx.cpu)


# ----------------------------------------------------------------------------------------------- chunk sizes
# attention scores per query chunk (all heads), not the whole score matrix of a long input (hundreds of MB); fewer
# than a few hundred query rows per GEMM (its other operand, the keys, is repacked per call) halve OpenBLAS's speed
ATTENTION_CHUNK_BYTES = 64 << 20
ATTENTION_MIN_ROWS = 256
ATTENTION_KERNEL_ROWS = 48  # query rows per kernel work item: 4 register blocks (8 on AVX2) reuse each block of keys
RESBLOCK_CHUNK_BYTES = 4 << 20  # per activation in a time chunk: small enough to stay in cache across its GEMMs
RESBLOCK_MIN_MARGINS = 4  # a chunk spans at least this many halos (each chunk re-reads its halos)


def attention_rows(batch: int, heads: int, frames: int) -> int:
    """Query rows per attention chunk (>= frames: the whole score matrix at once)."""
    rows = settings().attention_rows
    return rows if rows is not None else max(ATTENTION_CHUNK_BYTES // (4 * batch * heads * frames), ATTENTION_MIN_ROWS)


def resblock_frames(batch: int, channels: int, margin: int) -> int:
    """Frames per time chunk of a resblock stage whose widest halo is `margin` frames."""
    frames = settings().resblock_frames
    return frames if frames is not None else max(RESBLOCK_CHUNK_BYTES // (4 * batch * channels),
                                                 RESBLOCK_MIN_MARGINS * margin)
