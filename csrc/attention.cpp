// Multi-head self-attention for MLX's CPU device: out = softmax(q k^T * scale) v per head, a block of query rows
// at a time. MLX runs it as a batched GEMM (12 thin GEMMs that OpenBLAS threads one by one), a softmax pass over
// the whole (T, T) score matrix and a second batched GEMM; here each work item (a head's block of query rows)
// computes its scores, their softmax and its output rows while the scores are in L1/L2, and the cores share the
// items. Summation: a score sums q . k over the head's dims in order (fused multiply-adds from zero); an output
// sums p * v over the keys in passes of KEY_STEP keys, each pass from zero, added to the running total.
#include "vmath.h"

#include <new>
#include <vector>

namespace {

// Register blocks: RB query rows x NB vectors (of keys for the scores, of head dims for the output), the
// accumulators filling the vector registers but for the loaded vectors and the broadcast value (as conv2d.cpp).
#if defined(__AVX512F__)
constexpr int RB = 12;
#else
constexpr int RB = 6;
#endif
constexpr int NB = 2;
constexpr int WIDE = NB * LANES;  // keys / dims per register block
constexpr int KEY_STEP = 256;     // keys per pass of the output's sum: a blocked sum, as OpenBLAS's GEMM does

struct Dims {
  int B, T, H, D, Tp;  // Tp: keys rounded up to WIDE (the packed keys' padding is zero)
  long E;              // floats per frame in q, k, v and out: H * D
  float scale;
};

// s[r][j .. j + WIDE) = q[r] . k[j ..] for RB rows of q (row stride D); kb: keys j .. j + WIDE packed as (D, WIDE).
inline void score_block(const float* __restrict q, const float* __restrict kb, float* __restrict s, const Dims& d,
                        int j) {
  vf acc[RB][NB];
  const float* qr[RB];  // row pointers: the inner loop's addresses are base + c, no index arithmetic
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) {
    qr[r] = q + (size_t)r * d.D;
    for (int n = 0; n < NB; ++n) acc[r][n] = vf{};
  }
  const float* k = kb;
  for (int c = 0; c < d.D; ++c, k += WIDE) {
    vf kv[NB];
    for (int n = 0; n < NB; ++n) kv[n] = *(const vf*)(k + n * LANES);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const float qv = qr[r][c];
      for (int n = 0; n < NB; ++n) acc[r][n] += qv * kv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) *(vf*)(s + (size_t)r * d.Tp + j + n * LANES) = acc[r][n];
}

// o[r][c .. c + WIDE) (+)= sum over keys j in [j0, j1) of p[r][j] * v[j][c ..] for RB rows of p (row stride Tp);
// v: the head's values packed as (T, D); o: RB rows of D, overwritten by the first pass (j0 == 0), else added to.
inline void output_block(const float* __restrict p, const float* __restrict v, float* __restrict o, const Dims& d,
                         int c, int j0, int j1) {
  const float* pr[RB];  // row pointers: the inner loop's addresses are base + j, no index arithmetic
  vf acc[RB][NB];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) {
    pr[r] = p + (size_t)r * d.Tp;
    for (int n = 0; n < NB; ++n) acc[r][n] = vf{};
  }
  const float* vj = v + (size_t)j0 * d.D + c;
  for (int j = j0; j < j1; ++j, vj += d.D) {
    vf vv[NB];
    for (int n = 0; n < NB; ++n) vv[n] = *(const vf*)(vj + n * LANES);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const float pv = pr[r][j];
      for (int n = 0; n < NB; ++n) acc[r][n] += pv * vv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) {
      vf* dst = (vf*)(o + (size_t)r * d.D + c + n * LANES);
      *dst = j0 ? *dst + acc[r][n] : acc[r][n];
    }
}

// Query rows [r0, r0 + rows) of head h in batch b. Buffers (per worker): qb (R, D), sb (R, Tp), ob (R, D), with R =
// rows rounded up to RB (the padding rows are zero queries, computed and dropped).
void item(const float* q, const float* kp, const float* vp, float* out, const Dims& d, int b, int h, int r0, int rows,
          float* qb, float* sb, float* ob) {
  const int R = (rows + RB - 1) / RB * RB;
  for (int r = 0; r < R; ++r) {
    float* dst = qb + (size_t)r * d.D;
    if (r < rows)
      std::memcpy(dst, q + ((size_t)b * d.T + r0 + r) * d.E + (size_t)h * d.D, sizeof(float) * d.D);
    else
      std::memset(dst, 0, sizeof(float) * d.D);
  }
  const float* kh = kp + ((size_t)b * d.H + h) * d.D * d.Tp;
  for (int j = 0; j < d.Tp; j += WIDE)  // key blocks outer: a block's packed keys stay in L1 across the row blocks
    for (int r = 0; r < R; r += RB)
      score_block(qb + (size_t)r * d.D, kh + (size_t)j * d.D, sb + (size_t)r * d.Tp, d, j);
  // (the padding rows' raw scores are zeros: their output is computed from them and dropped)
  for (int r = 0; r < rows; ++r) softmax_row(sb + (size_t)r * d.Tp, sb + (size_t)r * d.Tp, d.T, d.scale);
  const float* vh = vp + ((size_t)b * d.H + h) * d.T * d.D;
  for (int j0 = 0; j0 < d.T; j0 += KEY_STEP)  // a pass's values (KEY_STEP x WIDE) stay in L1 across the row blocks
    for (int c = 0; c < d.D; c += WIDE)
      for (int r = 0; r < R; r += RB)
        output_block(sb + (size_t)r * d.Tp, vh, ob + (size_t)r * d.D, d, c, j0, std::min(d.T, j0 + KEY_STEP));
  for (int r = 0; r < rows; ++r)
    std::memcpy(out + ((size_t)b * d.T + r0 + r) * d.E + (size_t)h * d.D, ob + (size_t)r * d.D, sizeof(float) * d.D);
}

}  // namespace

PyObject* py_attention(PyObject*, PyObject* args) {
  PyObject *qo, *ko, *vo, *oo;
  int H, rows;
  float scale;
  if (!PyArg_ParseTuple(args, "OOOOifi", &qo, &ko, &vo, &oo, &H, &scale, &rows)) return nullptr;
  Buffer qb("attention"), kb("attention"), vb("attention"), ob("attention");
  if (!qb.get(qo, PyBUF_SIMPLE, "q", 3) || !kb.get(ko, PyBUF_SIMPLE, "k", 3) || !vb.get(vo, PyBUF_SIMPLE, "v", 3) ||
      !ob.get(oo, PyBUF_WRITABLE, "out", 3))
    return nullptr;
  const Py_ssize_t* s = qb.view.shape;
  bool same = true;
  for (const Buffer* x : {&kb, &vb, &ob})
    for (int i = 0; i < 3; ++i) same = same && x->view.shape[i] == s[i];
  if (!same || H < 1 || s[2] % H || (s[2] / H) % WIDE || s[1] < 1 || rows < 1) {
    PyErr_Format(PyExc_ValueError,
                 "attention: q, k, v and out must be (B, T, H * D) alike with T >= 1 and D a multiple of %d, and "
                 "rows >= 1; got q (%d, %d, %d), %d heads, %d rows", WIDE, (int)s[0], (int)s[1], (int)s[2], H, rows);
    return nullptr;
  }
  Dims d{(int)s[0], (int)s[1], H, (int)(s[2] / H), 0, (long)s[2], scale};
  d.Tp = (d.T + WIDE - 1) / WIDE * WIDE;
  rows = std::min(rows, d.T);
  const int blocks = (d.T + rows - 1) / rows;
  const int R = (rows + RB - 1) / RB * RB;
  const float *q = qb.data(), *k = kb.data(), *v = vb.data();
  float* out = ob.mutable_data();
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    // each head's keys in blocks of WIDE as (Tp / WIDE, D, WIDE), zero-padded (a score block reads them in order),
    // and its values as (T, D): a pass reads consecutive rows (in place, rows E apart, each key was a new page)
    std::vector<float> kp((size_t)d.B * H * d.Tp * d.D), vp((size_t)d.B * H * d.T * d.D);
    share((long)d.B * H, [&](long bh) {
      const int b = (int)(bh / H), h = (int)(bh % H);
      float *kdst = kp.data() + (size_t)bh * d.Tp * d.D, *vdst = vp.data() + (size_t)bh * d.T * d.D;
      for (int j = 0; j < d.Tp; ++j) {
        const size_t src = ((size_t)b * d.T + j) * d.E + (size_t)h * d.D;
        float* kb = kdst + (size_t)(j / WIDE) * d.D * WIDE + j % WIDE;
        for (int c = 0; c < d.D; ++c) kb[(size_t)c * WIDE] = j < d.T ? k[src + c] : 0.0f;
        if (j < d.T) std::memcpy(vdst + (size_t)j * d.D, v + src, sizeof(float) * d.D);
      }
    });
    const int workers = (int)std::max(1L, std::min<long>((long)d.B * H * blocks, cores()));
    std::vector<std::vector<float>> bufs(workers, std::vector<float>((size_t)R * (2 * d.D + d.Tp)));
    std::atomic<long> next{0};
    const long total = (long)d.B * H * blocks;
    parallel(workers, [&](int w) {
      float* qbuf = bufs[w].data();
      float *sbuf = qbuf + (size_t)R * d.D, *obuf = sbuf + (size_t)R * d.Tp;
      for (long i; (i = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
        const int blk = (int)(i % blocks), bh = (int)(i / blocks);
        const int r0 = blk * rows;
        item(q, kp.data(), vp.data(), out, d, bh / H, bh % H, r0, std::min(rows, d.T - r0), qbuf, sbuf, obuf);
      }
    });
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) return PyErr_NoMemory();
  Py_RETURN_NONE;
}
