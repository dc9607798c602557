// Depthwise Conv1d for MLX's CPU device (rvc_mlx._kernels.depthwise_conv1d), NLC float32, stride 1, dilation 1,
// with FCPE's neighbours fused: GLU on the input (a * sigmoid(b) of its two channel halves) and SiLU on the output.
//
// MLX runs a depthwise conv as one multiply-add pass over the whole activation per tap (31 for FCPE) on its scalar
// elementwise kernels: 25 ms per 1000 x 1024 conv, against ~1 ms here (8 frames x 16 channels in registers per
// tap). Sums per output: tap 0's product, taps 1.. k-1 by fused multiply-adds, then + bias, as layers.Conv1d.
// exp is fastmath's (Cephes expf: e^r by polynomial times 2^n), so GLU and SiLU round as fastmath's within an ulp.
#include "vmath.h"

#include <cmath>
#include <new>
#include <vector>

namespace {

struct Job {
  const float *x, *w, *bias;  // x (B, T, Cx), w (k, C), bias (C) or null
  float* y;                   // (B, To, C)
  int T, Cx, C, k, pad, To;
  bool glu, silu;
};

constexpr int TILE = 256;  // output frames per work item
constexpr int TB = 8;      // output frames per register block

// Output frames t .. t + N - 1 (of the tile) for channels [c, c + LANES), in registers over the taps: tap 0's
// product, then taps 1 .. k - 1 by fused multiply-adds, then + bias.
template <int N>
inline void frames(const Job& j, const float* buf, float* out, int t, int c, vf bias) {
  const size_t C = j.C;
  vf acc[N];
  const vf w0 = *(const vf*)(j.w + c);
  for (int i = 0; i < N; ++i) acc[i] = *(const vf*)(buf + (t + i) * C + c) * w0;
  for (int q = 1; q < j.k; ++q) {
    const vf wq = *(const vf*)(j.w + q * C + c);
    for (int i = 0; i < N; ++i) acc[i] += *(const vf*)(buf + (t + i + q) * C + c) * wq;
  }
  for (int i = 0; i < N; ++i) *(vf*)(out + (t + i) * C + c) = acc[i] + bias;
}

// Output frames [t0, t1) of batch b; buf holds the (GLU of the) input frames t0 - pad .. t1 - pad + k - 1.
void tile(const Job& j, int b, int t0, int t1, float* buf) {
  const int C = j.C, rows = t1 - t0 + j.k - 1;
  for (int r = 0; r < rows; ++r) {
    const int t = t0 - j.pad + r;
    float* dst = buf + (size_t)r * C;
    if (t < 0 || t >= j.T) {
      std::fill(dst, dst + C, 0.0f);
      continue;
    }
    const float* src = j.x + ((size_t)b * j.T + t) * j.Cx;
    if (j.glu) {
      for (int c = 0; c < C; c += LANES)
        *(vf*)(dst + c) = *(const vf*)(src + c) * (1.0f / (1.0f + exp_v(-*(const vf*)(src + C + c))));
    } else {
      std::copy(src, src + C, dst);
    }
  }
  float* out = j.y + ((size_t)b * j.To + t0) * C;
  for (int c = 0; c + LANES <= C; c += LANES) {
    const vf bias = j.bias ? *(const vf*)(j.bias + c) : vf{};
    int t = 0;
    for (; t + TB <= t1 - t0; t += TB) frames<TB>(j, buf, out, t, c, bias);
    for (; t < t1 - t0; ++t) frames<1>(j, buf, out, t, c, bias);
  }
  if (j.silu)
    for (size_t e = 0, n = (size_t)(t1 - t0) * C; e < n; e += LANES) {
      const vf v = *(const vf*)(out + e);
      *(vf*)(out + e) = v / (1.0f + exp_v(-v));
    }
}

}  // namespace

PyObject* py_depthwise_conv1d(PyObject*, PyObject* args) {
  PyObject *xo, *wo, *bo, *yo;
  int pad, glu, silu;
  if (!PyArg_ParseTuple(args, "OOOOipp", &xo, &wo, &bo, &yo, &pad, &glu, &silu)) return nullptr;
  Buffer xb("depthwise_conv1d"), wb("depthwise_conv1d"), bb("depthwise_conv1d"), yb("depthwise_conv1d");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 3) || !wb.get(wo, PyBUF_SIMPLE, "w", 2) ||
      (bo != Py_None && !bb.get(bo, PyBUF_SIMPLE, "bias", 1)) || !yb.get(yo, PyBUF_WRITABLE, "y", 3))
    return nullptr;
  const Py_ssize_t *xs = xb.view.shape, *ws = wb.view.shape, *ys = yb.view.shape;
  Job j{xb.data(), wb.data(), bo == Py_None ? nullptr : bb.data(), yb.mutable_data(), (int)xs[1], (int)xs[2],
        (int)ws[1], (int)ws[0], pad, (int)ys[1], glu != 0, silu != 0};
  if (j.Cx != (j.glu ? 2 : 1) * j.C || j.C % LANES || ys[0] != xs[0] || ys[2] != j.C || pad < 0 ||
      j.To != j.T + 2 * pad - j.k + 1 || j.To < 1 || (bo != Py_None && bb.view.shape[0] != j.C)) {
    PyErr_Format(PyExc_ValueError,
                 "depthwise_conv1d: x (%d, %d, %d), w (%d, %d), y (%d, %d, %d), padding %d do not fit (w is (k, C) "
                 "with C a multiple of %d, x has %s C channels)",
                 (int)xs[0], j.T, j.Cx, j.k, j.C, (int)ys[0], j.To, (int)ys[2], pad, LANES, j.glu ? "2 x" : "");
    return nullptr;
  }
  const int B = xs[0], tiles = (j.To + TILE - 1) / TILE;
  const long total = (long)B * tiles;
  const int n = workers_for(total);
  std::vector<std::vector<float>> bufs;
  try {
    bufs.assign(n, std::vector<float>((size_t)(TILE + j.k - 1) * j.C));
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  Py_BEGIN_ALLOW_THREADS
  share_items(total, n, [&](int worker, long g) {
    const int t0 = (int)(g % tiles) * TILE;
    tile(j, (int)(g / tiles), t0, std::min(j.To, t0 + TILE), bufs[worker].data());
  });
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}
