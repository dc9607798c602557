// A Linear layer's GEMM for MLX's CPU device: y = bias + x w^T, x (M, K) row-major, w packed once per weight as
// panels of WIDE output columns (N / WIDE, K, WIDE); x is packed once per call (MLX's addmm repacks both operands
// and first broadcasts the bias into y). One core runs it at the speed of its register block in L1 (~98% measured
// at HuBERT's shapes); the cores share work items: a chunk of rows x a group of panels. Summation: each output sums
// x . w over K in blocks of K_STEP inputs (each from zero, fused multiply-adds in order), added in turn to the
// bias, as OpenBLAS adds its blocks to C = bias in MLX's addmm.
#include "kernels.h"

#include <memory>
#include <new>

namespace {

// Register block (kernels.h): RB rows x NB vectors of output columns; x packed as (K, RB) per block of rows.
constexpr int RB = BLOCK_ROWS;
constexpr int NB = BLOCK_VECTORS;
constexpr int WIDE = NB * LANES;
constexpr int K_STEP = 256;  // inputs per block: a row block's packed x (RB x K_STEP) and a panel's slice in L1
constexpr int PANELS = 4;    // panels per work item's column block (a row block's x is reused across them)
constexpr long CHUNK_ROWS = 192;     // rows per work item
constexpr long STRETCH_ROWS = 1536;  // rows of x packed at a time

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
  // x is packed a stretch of rows at a time (STRETCH_ROWS: a bounded buffer); then the work items, a chunk of
  // rows (its packed x slice, outputs and a group's weight slice stay in L2) x a group of panels, share the cores
  const long blocks = (M + RB - 1) / RB, stretch = STRETCH_ROWS / RB;
  const long groups = (P + PANELS - 1) / PANELS;
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    const int workers = workers_for(std::max(groups, blocks));
    std::unique_ptr<float[]> xp(new float[(size_t)std::min(blocks, stretch) * K * RB]);
    std::unique_ptr<float[]> spare(new float[(size_t)workers * RB * N]);  // outputs of padding rows
    for (long s0 = 0; s0 < blocks; s0 += stretch) {
      const long s1 = std::min(blocks, s0 + stretch);
      share(s1 - s0, [&](long i) {  // (blocks, K, RB): written in order, read as RB row streams
        const float* src[RB];
        for (int r = 0; r < RB; ++r) {
          const long row = (s0 + i) * RB + r;
          src[r] = row < M ? x + (size_t)row * K : nullptr;
        }
        float* dst = xp.get() + (size_t)i * K * RB;
        for (long c = 0; c < K; ++c, dst += RB)
          for (int r = 0; r < RB; ++r) dst[r] = src[r] ? src[r][c] : 0.0f;
      });
      const long n = s1 - s0, chunks = (n * RB + CHUNK_ROWS - 1) / CHUNK_ROWS, per = (n + chunks - 1) / chunks;
      const long total = chunks * groups;
      share_items(total, (int)std::min<long>(workers, total), [&](int wk, long i) {
        float* mine = spare.get() + (size_t)wk * RB * N;
        float* rows[RB];
        const long b0 = i / groups * per, b1 = std::min(n, b0 + per);
        const long p0 = i % groups * PANELS, p1 = std::min(P, p0 + PANELS);
        for (long k0 = 0; k0 < K; k0 += K_STEP) {
          const int k = (int)std::min<long>(K_STEP, K - k0);
          for (long p = p0; p < p1; ++p) {  // the panel's slice stays in L1 across the row blocks
            const float* ws = w + ((size_t)p * K + k0) * WIDE;
            for (long blk = b0; blk < b1; ++blk) {
              for (int r = 0; r < RB; ++r) {
                const long row = (s0 + blk) * RB + r;
                rows[r] = (row < M ? y + (size_t)row * N : mine + (size_t)r * N) + p * WIDE;
              }
              block(xp.get() + ((size_t)blk * K + k0) * RB, ws, k, rows, bias ? bias + p * WIDE : nullptr,
                    k0 == 0);
            }
          }
        }
      });
    }
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) return PyErr_NoMemory();
  Py_RETURN_NONE;
}
