"""GEMM formulations run on host buffers through the BLAS MLX itself calls (OpenBLAS's `cblas_sgemm`), where MLX's
matmul would first copy its operands: a strided conv1d reads each folded tap's rows in place (leading dimension
stride * C), and its taps accumulate into one output buffer (beta = 1): a large one is the buffer of the MLX array
returned (`cpu_kernels._output`), a small one is copied into MLX once.

The sums are the GEMMs MLX's `gemm strided` path runs (same library, operands and shapes; OpenBLAS may pick another
kernel for a small one with another leading dimension); the copies MLX makes around them are gone. Whether this runs
is `dispatch`'s choice ("gemm strided host")."""

from __future__ import annotations

import numpy as np

from rvc_mlx import _blas, cpu_kernels
from rvc_mlx.runtime import mx

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS enums
FLOAT = 4  # bytes


def strided_conv1d(module, x: mx.array, padding: int) -> mx.array:
    """`module`'s conv1d (weight (O, k, C), stride s, optional bias) of NLC x, zero padding `padding`: output t
    sums, for each folded tap j < ceil(k / s), frames t*s + j*s .. + taps_j - 1 of x (taps_j * C contiguous floats)
    times that tap's (taps_j * C, O) weights; the bias is added last, as MLX's path adds it."""
    sgemm = _blas.cblas_sgemm()
    xn = cpu_kernels.host(x)  # evaluates x: a view of MLX's buffer
    if padding:
        xn = np.pad(xn, [(0, 0), (padding, padding), (0, 0)])
    (o, k, c), s = module.weight.shape, module.stride
    b, length, _ = xn.shape
    n = (length - k) // s + 1
    if n < 1:
        raise ValueError(f"conv1d input of {length} frames (padding included) is shorter than its kernel ({k})")
    taps = _tap_weights(module)
    buf, y = cpu_kernels._output((b, n, o))
    for i in range(b):
        out = buf[i].ctypes.data
        for j, w in enumerate(taps):
            # rows t = 0..n-1 of folded tap j start at frame (t + j) * s: read in place, s * C floats apart; the
            # last row ends at frame (n - 1) * s + k - 1 < length
            a = xn[i].ctypes.data + j * s * c * FLOAT
            sgemm(ROW_MAJOR, NO_TRANS, TRANS, n, o, w.shape[1], 1.0, a, s * c, w.ctypes.data, w.shape[1],
                  0.0 if j == 0 else 1.0, out, o)
    if "bias" in module:
        np.add(buf, np.asarray(module.bias, dtype=np.float32), out=buf)
    return y()


def _tap_weights(module) -> list[np.ndarray]:
    """Folded tap j's weights (O, taps_j * C), contiguous float32 (taps_j = min(s, k - j*s) frames), kept on the
    module until its weight array is replaced."""
    cache = cpu_kernels._weight_cache(module)
    if "strided" not in cache:
        w = np.asarray(module.weight, dtype=np.float32)
        (o, k, _), s = w.shape, module.stride
        cache["strided"] = [np.ascontiguousarray(w[:, j:j + s].reshape(o, -1)) for j in range(0, k, s)]
    return cache["strided"]
