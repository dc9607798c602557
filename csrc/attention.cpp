// Multi-head self-attention for MLX's CPU device: out = softmax(q k^T * scale) v per head, a block of query rows
// at a time. MLX runs it as a batched GEMM (12 thin GEMMs that OpenBLAS threads one by one), a softmax pass over
// the whole (T, T) score matrix and a second batched GEMM; here each work item (a head's block of query rows)
// computes its scores, their softmax and its output rows while the scores are in L1/L2, and the cores share the
// items. Summation: a score sums q . k over the head's dims in order (fused multiply-adds from zero); an output
// sums e * v over the keys in passes of KEY_STEP keys, each pass from zero, added to the running total, and is
// divided by the sum of the e last (softmax's division moved after the sum: D divisions per row instead of T).
#include "vmath.h"

#include <memory>
#include <new>
#include <vector>

namespace {

// Register blocks (kernels.h): RB query rows x NB vectors (of keys for the scores, of head dims for the output).
constexpr int RB = BLOCK_ROWS;
constexpr int NB = BLOCK_VECTORS;
constexpr int WIDE = NB * LANES;  // keys / dims per register block
constexpr int KEY_STEP = 128;     // keys per pass of the output's sum: a blocked sum, as OpenBLAS's GEMM does
constexpr float NO_KEY = -3.0e38f;  // the score of a padding key: below every real score, never the row's max

struct Dims {
  int B, T, H, D, Tp;  // Tp: keys rounded up to WIDE (the packed keys' padding is zero)
  long E;              // floats per frame in q, k, v and out: H * D
  float scale;
};

// The register blocks read their broadcast operand at compile-time offsets from one pointer (the queries packed as
// (D, RB), the scores in tiles of RB rows x KEY_STEP keys): with a pointer per row they spilled to the stack and
// reloaded, twice the loads per multiply-add.

// s[r][j .. j + WIDE) = (q[r] . k[j ..]) * scale for RB query rows (qp: packed (D, RB)), and top[r] = max(top[r],
// those scores); kb: keys j .. j + WIDE packed as (D, WIDE); s: the tile row of query 0 at key j; padding keys
// (j >= T) score NO_KEY.
inline void score_block(const float* __restrict qp, const float* __restrict kb, float* __restrict s,
                        vf* __restrict top, const Dims& d, int j) {
  vf acc[RB][NB];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) acc[r][n] = vf{};
  const float* k = kb;
  const float* qc = qp;
  for (int c = 0; c < d.D; ++c, k += WIDE, qc += RB) {
    vf kv[NB];
    for (int n = 0; n < NB; ++n) kv[n] = *(const vf*)(k + n * LANES);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const float qv = qc[r];
      for (int n = 0; n < NB; ++n) acc[r][n] += qv * kv[n];
    }
  }
  vi keep[NB];  // lanes of real keys (all set but in the last block)
  for (int n = 0; n < NB; ++n) {
    vi key;
    for (int i = 0; i < LANES; ++i) key[i] = j + n * LANES + i;
    keep[n] = key < d.T;
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) {
      vf sc = acc[r][n] * d.scale;
      sc = keep[n] ? sc : vf{} + NO_KEY;
      *(vf*)(s + (size_t)r * KEY_STEP + n * LANES) = sc;
      top[r] = sc > top[r] ? sc : top[r];
    }
}

// o[r][c .. c + WIDE) (+)= sum over keys j < n of p[r][j] * v[j][c ..] for RB rows of a score tile p (row stride
// KEY_STEP); v: the tile's first key's values, rows D apart; o: RB row pointers, overwritten when `first`.
inline void output_block(const float* __restrict p, const float* __restrict v, float* const* __restrict o, int D,
                         int c, int n_keys, bool first) {
  vf acc[RB][NB];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) acc[r][n] = vf{};
  const float* vj = v + c;
  for (int j = 0; j < n_keys; ++j, vj += D) {
    vf vv[NB];
    for (int n = 0; n < NB; ++n) vv[n] = *(const vf*)(vj + n * LANES);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const float pv = p[r * KEY_STEP + j];
      for (int n = 0; n < NB; ++n) acc[r][n] += pv * vv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NB; ++n) {
      vf* dst = (vf*)(o[r] + c + n * LANES);
      *dst = first ? acc[r][n] : *dst + acc[r][n];
    }
}

// A worker's buffers for blocks of R query rows: packed queries (R / RB, D, RB), scores in tiles (Tk / KEY_STEP,
// R, KEY_STEP) with Tk the keys rounded up to KEY_STEP, row maxima (R vectors), sums (R) and output rows (RB, D)
// for the padding rows of a last block. Not zero-filled: each item writes what it reads.
struct Scratch {
  std::unique_ptr<float[]> mem;
  float *qp, *s, *sum, *spare;
  vf* top;
  int tiles;
  Scratch(int R, const Dims& d) : tiles((d.T + KEY_STEP - 1) / KEY_STEP) {
    mem.reset(new float[(size_t)R * d.D + (size_t)tiles * R * KEY_STEP + (size_t)R * (LANES + 1) +
                        (size_t)RB * d.D]);
    qp = mem.get();
    s = qp + (size_t)R * d.D;
    top = (vf*)(s + (size_t)tiles * R * KEY_STEP);
    sum = (float*)(top + R);
    spare = sum + R;
  }
};

// Query rows [r0, r0 + rows) of head h in batch b, read from q and written to out in place. The R - rows padding
// rows (R: rows rounded up to RB) are zero queries whose outputs go to the spare rows and are dropped.
void item(const float* q, const float* kp, const float* vp, float* out, const Dims& d, int b, int h, int r0, int rows,
          int R, Scratch& w) {
  const size_t first = ((size_t)b * d.T + r0) * d.E + (size_t)h * d.D;
  for (int r = 0; r < R; ++r) {
    const float* src = q + first + (size_t)r * d.E;
    float* dst = w.qp + (size_t)(r / RB) * d.D * RB + r % RB;
    for (int c = 0; c < d.D; ++c) dst[(size_t)c * RB] = r < rows ? src[c] : 0.0f;
  }
  const vf low = vf{} + NO_KEY;
  for (int r = 0; r < R; ++r) w.top[r] = low;
  const float* kh = kp + ((size_t)b * d.H + h) * d.D * d.Tp;
  for (int j = 0; j < d.Tp; j += WIDE) {  // key blocks outer: a block's packed keys stay in L1 across the row blocks
    float* tile = w.s + (size_t)(j / KEY_STEP) * R * KEY_STEP + j % KEY_STEP;
    for (int r = 0; r < R; r += RB)
      score_block(w.qp + (size_t)r * d.D, kh + (size_t)j * d.D, tile + (size_t)r * KEY_STEP, w.top + r, d, j);
  }
  // e = exp(s - max) over the real keys and their sums, as fastmath's softmax (the padding rows' scores, zeros from
  // zero queries, are left as they are: their outputs are dropped)
  for (int r = 0; r < rows; ++r) {
    const float m = hmax(w.top[r]);
    vf acc{};
    for (int t = 0; t < w.tiles; ++t) {
      float* sr = w.s + ((size_t)t * R + r) * KEY_STEP;
      const int n = std::min(KEY_STEP, d.T - t * KEY_STEP), whole = n - n % LANES;
      for (int i = 0; i < whole; i += LANES) {
        const vf e = exp_v(*(const vf*)(sr + i) - m);
        *(vf*)(sr + i) = e;
        acc += e;
      }
      if (whole < n) {  // the padding keys' NO_KEY scores: exp clamps them to a tiny value, zeroed here
        vf e = exp_v(*(const vf*)(sr + whole) - m);
        for (int i = n - whole; i < LANES; ++i) e[i] = 0.0f;
        *(vf*)(sr + whole) = e;
        acc += e;
      }
    }
    w.sum[r] = hsum(acc);
  }
  const float* vh = vp + ((size_t)b * d.H + h) * d.T * d.D;
  float* orow[RB];
  for (int t = 0; t < w.tiles; ++t) {  // a tile's values (KEY_STEP x WIDE) stay in L1 across the row blocks
    const int n = std::min(KEY_STEP, d.T - t * KEY_STEP);
    for (int c = 0; c < d.D; c += WIDE)
      for (int r = 0; r < R; r += RB) {
        for (int i = 0; i < RB; ++i) orow[i] = r + i < rows ? out + first + (size_t)(r + i) * d.E : w.spare + i * d.D;
        output_block(w.s + ((size_t)t * R + r) * KEY_STEP, vh + (size_t)t * KEY_STEP * d.D, orow, d.D, c, n, t == 0);
      }
  }
  for (int r = 0; r < rows; ++r) {
    vf* o = (vf*)(out + first + (size_t)r * d.E);
    const vf s = vf{} + w.sum[r];
    for (int c = 0; c < d.D / LANES; ++c) o[c] = o[c] / s;
  }
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
    std::unique_ptr<float[]> kp(new float[(size_t)d.B * H * d.Tp * d.D]), vp(new float[(size_t)d.B * H * d.T * d.D]);
    share((long)d.B * H, [&](long bh) {
      const int b = (int)(bh / H), h = (int)(bh % H);
      float *kdst = kp.get() + (size_t)bh * d.Tp * d.D, *vdst = vp.get() + (size_t)bh * d.T * d.D;
      for (int j = 0; j < d.Tp; ++j) {
        const size_t src = ((size_t)b * d.T + j) * d.E + (size_t)h * d.D;
        float* kb = kdst + (size_t)(j / WIDE) * d.D * WIDE + j % WIDE;
        for (int c = 0; c < d.D; ++c) kb[(size_t)c * WIDE] = j < d.T ? k[src + c] : 0.0f;
        if (j < d.T) std::memcpy(vdst + (size_t)j * d.D, v + src, sizeof(float) * d.D);
      }
    });
    const int workers = workers_for((long)d.B * H * blocks);
    std::vector<Scratch> scratch;
    scratch.reserve(workers);
    for (int w = 0; w < workers; ++w) scratch.emplace_back(R, d);
    share_items((long)d.B * H * blocks, workers, [&](int w, long i) {
      const int blk = (int)(i % blocks), bh = (int)(i / blocks);
      const int r0 = blk * rows;
      item(q, kp.get(), vp.get(), out, d, bh / H, bh % H, r0, std::min(rows, d.T - r0), R, scratch[w]);
    });
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) return PyErr_NoMemory();
  Py_RETURN_NONE;
}
