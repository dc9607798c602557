// A Linear layer's GEMM for MLX's CPU device: y = bias + x w^T, x (M, K) row-major, w packed once per weight as
// panels of WIDE output columns (N / WIDE, K, WIDE). OpenBLAS reaches 50-65% of the FMA peak on HuBERT's shapes
// (M = 500 frames, K and N 768 or 3072: its threads split a thin M and repack both operands per call); here the
// weights are packed ahead, x once per call, and the cores share blocks of columns. Summation: each output sums
// x . w over K in blocks of K_STEP inputs (each from zero, fused multiply-adds in order), added in turn to the
// bias, as OpenBLAS adds its blocks to C = bias (MLX's addmm).
#include "kernels.h"

#include <memory>
#include <new>

namespace {

// Register block: RB rows x NB vectors of columns, the accumulators filling the vector registers but for the
// loaded vectors and the broadcast value (as attention.cpp); x packed as (K, RB) per block of rows, so that the
// broadcasts are at fixed offsets from one pointer.
#if defined(__AVX512F__)
constexpr int RB = 12;
#else
constexpr int RB = 6;
#endif
constexpr int NB = 2;
constexpr int WIDE = NB * LANES;
constexpr int K_STEP = 256;  // inputs per block: a row block's packed x (RB x K_STEP) and a panel's slice in L1
constexpr int PANELS = 4;    // panels per work item's column block (a row block's x is reused across them)

// y rows (+)= x block (K_STEP or fewer inputs, packed (k, RB)) times a weight panel slice (k, WIDE); y: RB row
// pointers at the panel's first column; `first`: start from the bias (b, WIDE values) instead of y.
inline void block(const float* __restrict xp, const float* __restrict wp, int k, float* const* __restrict y,
                  const float* __restrict b, bool first) {
  vf acc[RB][NB];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) acc[r][n] = vf{};
  for (int c = 0; c < k; ++c, xp += RB, wp += WIDE) {
    vf wv[NB];
    for (int n = 0; n < NB; ++n) wv[n] = *(const vf*)(wp + n * LANES);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const float xv = xp[r];
      for (int n = 0; n < NB; ++n) acc[r][n] += xv * wv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) {
      vf* dst = (vf*)(y[r] + n * LANES);
      const vf base = first ? (b ? *(const vf*)(b + n * LANES) : vf{}) : *dst;
      *dst = base + acc[r][n];
    }
}

}  // namespace

PyObject* py_linear(PyObject*, PyObject* args) {
  PyObject *xo, *wo, *bo, *yo;
  if (!PyArg_ParseTuple(args, "OOOO", &xo, &wo, &bo, &yo)) return nullptr;
  Buffer xb("linear"), wb("linear"), bb("linear"), yb("linear");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 2) || !wb.get(wo, PyBUF_SIMPLE, "w", 3) ||
      (bo != Py_None && !bb.get(bo, PyBUF_SIMPLE, "bias", 1)) || !yb.get(yo, PyBUF_WRITABLE, "y", 2))
    return nullptr;
  const long M = xb.view.shape[0], K = xb.view.shape[1], P = wb.view.shape[0], N = P * WIDE;
  if (wb.view.shape[1] != K || wb.view.shape[2] != WIDE || yb.view.shape[0] != M || yb.view.shape[1] != N ||
      (bo != Py_None && bb.view.shape[0] != N) || M < 1 || K < 1 || P < 1) {
    PyErr_Format(PyExc_ValueError,
                 "linear: x (M, K), w packed (N / %d, K, %d), bias (N) or None and y (M, N) must agree, M, K, N >= 1; "
                 "got x (%ld, %ld), w (%ld, %ld, %ld), y (%ld, %ld)", WIDE, WIDE, M, K, P, (long)wb.view.shape[1],
                 (long)wb.view.shape[2], (long)yb.view.shape[0], (long)yb.view.shape[1]);
    return nullptr;
  }
  const float *x = xb.data(), *w = wb.data(), *bias = bo == Py_None ? nullptr : bb.data();
  float* y = yb.mutable_data();
  const long blocks = (M + RB - 1) / RB;
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    // x as (blocks, K, RB): the last block's missing rows are zeros, their outputs go to a spare tile
    std::unique_ptr<float[]> xp(new float[(size_t)blocks * K * RB]);
    share(blocks, [&](long blk) {
      const float* src[RB];  // the block's rows (a zero row for those past M): written in order, read as RB streams
      for (int r = 0; r < RB; ++r) src[r] = blk * RB + r < M ? x + (size_t)(blk * RB + r) * K : nullptr;
      float* dst = xp.get() + (size_t)blk * K * RB;
      for (long c = 0; c < K; ++c, dst += RB)
        for (int r = 0; r < RB; ++r) dst[r] = src[r] ? src[r][c] : 0.0f;
    });
    const long groups = (P + PANELS - 1) / PANELS;
    const int workers = (int)std::max(1L, std::min<long>(groups, cores()));
    std::unique_ptr<float[]> spare(new float[(size_t)workers * RB * N]);
    std::atomic<long> next{0};
    parallel(workers, [&](int wk) {
      float* mine = spare.get() + (size_t)wk * RB * N;
      float* rows[RB];
      for (long g; (g = next.fetch_add(1, std::memory_order_relaxed)) < groups;) {
        const long p0 = g * PANELS, p1 = std::min(P, p0 + PANELS);
        for (long k0 = 0; k0 < K; k0 += K_STEP) {  // a block of inputs: x's slice for all rows stays in L2
          const int k = (int)std::min<long>(K_STEP, K - k0);
          for (long p = p0; p < p1; ++p) {  // the panel's slice stays in L1 across the row blocks
            const float* ws = w + ((size_t)p * K + k0) * WIDE;
            for (long blk = 0; blk < blocks; ++blk) {
              for (int r = 0; r < RB; ++r) {
                const long row = blk * RB + r;
                rows[r] = (row < M ? y + (size_t)row * N : mine + (size_t)r * N) + p * WIDE;
              }
              block(xp.get() + ((size_t)blk * K + k0) * RB, ws, k, rows, bias ? bias + p * WIDE : nullptr, k0 == 0);
            }
          }
        }
      }
    });
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) return PyErr_NoMemory();
  Py_RETURN_NONE;
}
