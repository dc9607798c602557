// Elementwise kernels for MLX's CPU device: row softmax (of scaled scores), GELU, LayerNorm (after a residual add),
// and per-channel GroupNorm fused with GELU (HuBERT's first feature-extractor layer, with or without its conv).
// MLX's Linux build runs these as chains of scalar passes (fastmath's polynomials compile to one pass each, but with
// no vector instructions); here each is one to three vectorised passes shared across the cores. Transcendentals are
// fastmath's polynomials (vmath.h).
#include "vmath.h"

#include <cmath>
#include <vector>

namespace {

constexpr long CHUNK = 1 << 14;  // elements per GELU work item

// GroupNorm with one group per channel: statistics over the L frames of (L, C) channels-last x, per work item
// GROUP_VECTORS vectors of channels.
constexpr int STAT_BLOCK = 256;
constexpr int GROUP_VECTORS = 8;  // channels per GroupNorm work item: 8 vectors

// The GroupNorm's input, channels-last (L, C): frame t's V vectors of channels from c, into h[0 .. V). Values in
// memory ...
struct Stored {
  const float* x;
  int C;
  template <int V>
  void row(long t, int c, vf* h) const {
    for (int v = 0; v < V; ++v) h[v] = *(const vf*)(x + t * C + c + v * LANES);
  }
};

// ... or a one-channel conv's output (HuBERT's first conv: 1 -> 512 channels, k 10, stride 5), recomputed in each
// pass from the waveform, which stays in cache, instead of stored and read three times: sum over the taps j of
// x[t * stride + j] * w[j, c], in tap order (fused multiply-adds, from the first product).
struct MonoConv {
  const float* x;  // the waveform of one batch item
  const float* w;  // (K, C)
  int K, C, stride;
  template <int V>
  void row(long t, int c, vf* h) const {
    const float* xt = x + t * stride;
    const float* wj = w + c;
    for (int v = 0; v < V; ++v) h[v] = xt[0] * *(const vf*)(wj + v * LANES);
    for (int j = 1; j < K; ++j) {
      wj += C;
      const float xj = xt[j];  // one broadcast per tap for all V vectors
      for (int v = 0; v < V; ++v) h[v] += xj * *(const vf*)(wj + v * LANES);
    }
  }
};

// Sums over the L frames of (h - center)^power (power 1 or 2) for V vectors of channels at row offset c: float32
// vector sums over blocks of STAT_BLOCK frames, the block sums in float64.
template <int V, class Src>
void channel_sums(const Src& h, long L, int c, const vf* center, int power, double* out) {
  for (int k = 0; k < V * LANES; ++k) out[k] = 0.0;
  for (long t0 = 0; t0 < L; t0 += STAT_BLOCK) {
    vf acc[V] = {};
    for (long t = t0, t1 = std::min(L, t0 + STAT_BLOCK); t < t1; ++t) {
      vf row[V];
      h.template row<V>(t, c, row);
      for (int v = 0; v < V; ++v) {
        const vf d = row[v] - center[v];
        acc[v] += power == 1 ? d : d * d;
      }
    }
    for (int v = 0; v < V; ++v)
      for (int i = 0; i < LANES; ++i) out[v * LANES + i] += acc[v][i];
  }
}

template <int V, class Src>
void group_norm_gelu_block(const Src& h, float* y, const float* gamma, const float* beta, long L, int C, int c,
                           float eps, bool gelu) {
  double sum[V * LANES];
  vf first[V], mu[V], mu_lo[V], scale[V];
  // the mean as the first frame plus the mean difference from it: float32 sums of values far from zero would
  // lose their low bits (a common offset of 50 cost 1e-5 of the mean)
  h.template row<V>(0, c, first);
  channel_sums<V>(h, L, c, first, 1, sum);
  // the mean as two floats (hi + lo): x - hi is exact for x near the mean, so a large common offset costs nothing
  for (int v = 0; v < V; ++v)
    for (int i = 0; i < LANES; ++i) {
      const double mean = (double)first[v][i] + sum[v * LANES + i] / (double)L;
      mu[v][i] = (float)mean;
      mu_lo[v][i] = (float)(mean - (double)mu[v][i]);
    }
  channel_sums<V>(h, L, c, mu, 2, sum);  // the variance about the mean (two passes)
  for (int v = 0; v < V; ++v)
    for (int i = 0; i < LANES; ++i)  // (x - mean) * rsqrt(var + eps) * gamma + beta, as MLX's GroupNorm rounds it
      scale[v][i] = 1.0f / std::sqrt((float)(sum[v * LANES + i] / (double)L) + eps);
  for (long t = 0; t < L; ++t) {
    float* dst = y + t * C + c;
    vf row[V];
    h.template row<V>(t, c, row);
    for (int v = 0; v < V; ++v) {
      const vf g = *(const vf*)(gamma + c + v * LANES), b = *(const vf*)(beta + c + v * LANES);
      const vf r = (row[v] - mu[v] - mu_lo[v]) * scale[v] * g + b;
      *(vf*)(dst + v * LANES) = gelu ? gelu_v(r) : r;
    }
  }
}

// GroupNorm (+ GELU) over B batches of L frames of C channels, from h(batch), on all cores: a work item per batch and
// GROUP_VECTORS vectors of channels (the channels' last block, if narrower, a vector at a time: the counts are
// compile-time).
template <class Source>
void group_norm_gelu(const Source& h, long B, float* y, const float* gamma, const float* beta, long L, int C,
                     float eps, bool gelu) {
  const int blocks = (C / LANES + GROUP_VECTORS - 1) / GROUP_VECTORS;
  share(B * blocks, [&](long item) {
    const long batch = item / blocks;
    const int c = (int)(item % blocks) * GROUP_VECTORS * LANES;
    const auto src = h(batch);
    float* yb = y + batch * L * C;
    if ((C - c) / LANES >= GROUP_VECTORS) {
      group_norm_gelu_block<GROUP_VECTORS>(src, yb, gamma, beta, L, C, c, eps, gelu);
    } else {
      for (int cv = c; cv < C; cv += LANES) group_norm_gelu_block<1>(src, yb, gamma, beta, L, C, cv, eps, gelu);
    }
  });
}

// One row of n (a multiple of LANES): h = x + r (r optional, rounded as MLX's add), then LayerNorm. The mean is the
// row's first value plus the mean difference from it (float32 vector sums totalled in float64), held as two floats
// hi + lo, so that h - hi - lo is exact near the mean even for values far from zero (as group_norm_gelu_block);
// the variance is the mean square about it (a second pass); y may be x.
void layer_norm_row(const float* x, const float* r, const float* gamma, const float* beta, float* y, int n,
                    float eps) {
  const float first = r ? x[0] + r[0] : x[0];
  vf acc{};
  for (int i = 0; i < n; i += LANES) {
    const vf h = r ? *(const vf*)(x + i) + *(const vf*)(r + i) : *(const vf*)(x + i);
    *(vf*)(y + i) = h;
    acc += h - first;
  }
  double total = 0.0;
  for (int i = 0; i < LANES; ++i) total += acc[i];
  const double mean = (double)first + total / n;
  const float hi = (float)mean, lo = (float)(mean - (double)hi);
  acc = vf{};
  for (int i = 0; i < n; i += LANES) {
    const vf d = *(const vf*)(y + i) - hi - lo;
    acc += d * d;
  }
  total = 0.0;
  for (int i = 0; i < LANES; ++i) total += acc[i];
  const float inv = 1.0f / std::sqrt((float)(total / n) + eps);
  for (int i = 0; i < n; i += LANES)
    *(vf*)(y + i) = (*(const vf*)(y + i) - hi - lo) * inv * *(const vf*)(gamma + i) + *(const vf*)(beta + i);
}

}  // namespace

PyObject* py_layer_norm(PyObject*, PyObject* args) {
  PyObject *xo, *ro, *go, *bo, *yo;
  float eps;
  if (!PyArg_ParseTuple(args, "OOOOOf", &xo, &ro, &go, &bo, &yo, &eps)) return nullptr;
  Buffer xb("layer_norm"), rb("layer_norm"), gb("layer_norm"), bb("layer_norm"), yb("layer_norm");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 2) || (ro != Py_None && !rb.get(ro, PyBUF_SIMPLE, "residual", 2)) ||
      !gb.get(go, PyBUF_SIMPLE, "gamma", 1) || !bb.get(bo, PyBUF_SIMPLE, "beta", 1) ||
      !yb.get(yo, PyBUF_WRITABLE, "y", 2))
    return nullptr;
  const long rows = xb.view.shape[0];
  const int n = (int)xb.view.shape[1];
  bool ok = n >= LANES && n % LANES == 0 && gb.view.shape[0] == n && bb.view.shape[0] == n &&
            yb.view.shape[0] == rows && yb.view.shape[1] == n;
  if (ro != Py_None) ok = ok && rb.view.shape[0] == rows && rb.view.shape[1] == n;
  if (!ok) {
    PyErr_Format(PyExc_ValueError, "layer_norm: x (rows, n) with n a multiple of %d, residual and y shaped as x, "
                 "gamma and beta (n,)", LANES);
    return nullptr;
  }
  const float *x = xb.data(), *r = ro == Py_None ? nullptr : rb.data(), *g = gb.data(), *b = bb.data();
  float* y = yb.mutable_data();
  const long per = std::max(1L, 16384L / n);  // rows per work item
  Py_BEGIN_ALLOW_THREADS
  share((rows + per - 1) / per, [&](long item) {
    for (long i = item * per, end = std::min(rows, i + per); i < end; ++i)
      layer_norm_row(x + i * n, r ? r + i * n : nullptr, g, b, y + i * n, n, eps);
  });
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* py_softmax(PyObject*, PyObject* args) {
  PyObject *xo, *yo;
  float scale;
  if (!PyArg_ParseTuple(args, "OOf", &xo, &yo, &scale)) return nullptr;
  Buffer xb("softmax"), yb("softmax");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 2) || !yb.get(yo, PyBUF_WRITABLE, "y", 2)) return nullptr;
  const long rows = xb.view.shape[0];
  const int n = (int)xb.view.shape[1];
  if (yb.view.shape[0] != rows || yb.view.shape[1] != n || n < 1) {
    PyErr_SetString(PyExc_ValueError, "softmax: x and y must be (rows, n) alike, n >= 1");
    return nullptr;
  }
  const float* x = xb.data();
  float* y = yb.mutable_data();
  const long per = std::max(1L, 4096L / n);  // rows per work item
  Py_BEGIN_ALLOW_THREADS
  share((rows + per - 1) / per, [&](long item) {
    for (long r = item * per, end = std::min(rows, r + per); r < end; ++r) softmax_row(x + r * n, y + r * n, n, scale);
  });
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* py_gelu(PyObject*, PyObject* args) {
  PyObject *xo, *yo;
  if (!PyArg_ParseTuple(args, "OO", &xo, &yo)) return nullptr;
  Buffer xb("gelu"), yb("gelu");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 1) || !yb.get(yo, PyBUF_WRITABLE, "y", 1)) return nullptr;
  const long n = xb.view.shape[0];
  if (yb.view.shape[0] != n) {
    PyErr_SetString(PyExc_ValueError, "gelu: x and y must have the same length");
    return nullptr;
  }
  const float* x = xb.data();
  float* y = yb.mutable_data();
  Py_BEGIN_ALLOW_THREADS
  share((n + CHUNK - 1) / CHUNK, [&](long item) {
    const long a = item * CHUNK, b = std::min(n, a + CHUNK);
    long i = a;
    for (; i + LANES <= b; i += LANES) *(vf*)(y + i) = gelu_v(*(const vf*)(x + i));
    if (i < b) {
      vf t{};
      for (long k = i; k < b; ++k) t[k - i] = x[k];
      t = gelu_v(t);
      for (long k = i; k < b; ++k) y[k] = t[k - i];
    }
  });
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* py_group_norm_gelu(PyObject*, PyObject* args) {
  PyObject *xo, *go, *bo, *yo;
  float eps;
  int gelu;
  if (!PyArg_ParseTuple(args, "OOOOfp", &xo, &go, &bo, &yo, &eps, &gelu)) return nullptr;
  Buffer xb("group_norm_gelu"), gb("group_norm_gelu"), bb("group_norm_gelu"), yb("group_norm_gelu");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 3) || !gb.get(go, PyBUF_SIMPLE, "gamma", 1) ||
      !bb.get(bo, PyBUF_SIMPLE, "beta", 1) || !yb.get(yo, PyBUF_WRITABLE, "y", 3))
    return nullptr;
  const Py_ssize_t* xs = xb.view.shape;
  const long B = xs[0], L = xs[1];
  const int C = (int)xs[2];
  if (C % LANES || L < 1 || gb.view.shape[0] != C || bb.view.shape[0] != C || yb.view.shape[0] != B ||
      yb.view.shape[1] != L || yb.view.shape[2] != C) {
    PyErr_Format(PyExc_ValueError,
                 "group_norm_gelu: x (B, L, C) with C a multiple of %d, gamma and beta (C,), y shaped as x", LANES);
    return nullptr;
  }
  const float *x = xb.data(), *g = gb.data(), *b = bb.data();
  float* y = yb.mutable_data();
  Py_BEGIN_ALLOW_THREADS
  group_norm_gelu([&](long batch) { return Stored{x + batch * L * C, C}; }, B, y, g, b, L, C, eps, gelu != 0);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* py_conv_group_norm_gelu(PyObject*, PyObject* args) {
  PyObject *xo, *wo, *go, *bo, *yo;
  int stride;
  float eps;
  if (!PyArg_ParseTuple(args, "OOOOOif", &xo, &wo, &go, &bo, &yo, &stride, &eps)) return nullptr;
  Buffer xb("conv_group_norm_gelu"), wb("conv_group_norm_gelu"), gb("conv_group_norm_gelu"),
      bb("conv_group_norm_gelu"), yb("conv_group_norm_gelu");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 2) || !wb.get(wo, PyBUF_SIMPLE, "w", 2) ||
      !gb.get(go, PyBUF_SIMPLE, "gamma", 1) || !bb.get(bo, PyBUF_SIMPLE, "beta", 1) ||
      !yb.get(yo, PyBUF_WRITABLE, "y", 3))
    return nullptr;
  const long B = xb.view.shape[0], N = xb.view.shape[1];
  const int K = (int)wb.view.shape[0], C = (int)wb.view.shape[1];
  const long L = stride >= 1 && N >= K ? (N - K) / stride + 1 : 0;
  if (C % LANES || K < 1 || L < 1 || gb.view.shape[0] != C || bb.view.shape[0] != C || yb.view.shape[0] != B ||
      yb.view.shape[1] != L || yb.view.shape[2] != C) {
    PyErr_Format(PyExc_ValueError,
                 "conv_group_norm_gelu: x (B, N), w (K, C) with C a multiple of %d, N >= K, stride >= 1, gamma and "
                 "beta (C,), y (B, (N - K) / stride + 1, C)", LANES);
    return nullptr;
  }
  const float *x = xb.data(), *w = wb.data(), *g = gb.data(), *b = bb.data();
  float* y = yb.mutable_data();
  Py_BEGIN_ALLOW_THREADS
  group_norm_gelu([&](long batch) { return MonoConv{x + batch * N, w, K, C, stride}; }, B, y, g, b, L, C, eps, true);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}
