// GRU recurrence for MLX's CPU device (rvc_mlx._kernels.gru_scan): torch's cell in float32.
//
// RMVPE's BiGRU (H = 256, ~1000 steps per direction per 10 s) is a chain of (1, 256) x (256, 768) products. Per
// step, MLX pays ~6 us of dispatch per op and numpy ~25 us for its ~10 ops: more than torch's whole step. Here a
// step is one vectorised GEMV (W_hh, 768 KB, stays in L2) and the gates; the two directions run on two cores.
#include "kernels.h"

#include <cmath>
#include <memory>
#include <new>
#include <vector>

namespace {

struct Direction {
  const float *gi, *w, *b;  // (B, T, 3H) input projections, (H, 3H), (3H)
  float *out, *h;           // (B, T, H), (B, H)
  bool reverse;
  float *gh, *state;        // scratch: (3H), (H)
};

// gh = h @ w + b, w (H, N) row-major: each output summed over k in order (fused multiply-adds), then + b[j].
void gemv(const float* h, const float* w, const float* b, float* gh, int H, int N) {
  constexpr int NB = 8;  // 8 vectors of outputs in registers while h streams by
  int j = 0;
  for (; j + NB * LANES <= N; j += NB * LANES) {
    vf acc[NB] = {};
    for (int k = 0; k < H; ++k) {
      const float hk = h[k];
      const float* wr = w + (size_t)k * N + j;
      for (int n = 0; n < NB; ++n) acc[n] += hk * *(const vf*)(wr + n * LANES);
    }
    for (int n = 0; n < NB; ++n) *(vf*)(gh + j + n * LANES) = acc[n] + *(const vf*)(b + j + n * LANES);
  }
  for (; j < N; ++j) {
    float acc = 0;
    for (int k = 0; k < H; ++k) acc += h[k] * w[(size_t)k * N + j];
    gh[j] = acc + b[j];
  }
}

// torch's CPU cell: r, z = sigmoid(gi + gh) (first 2H), n = tanh(gi_n + r * gh_n), h' = n + z * (h - n).
void scan(const Direction& d, int B, int T, int H) {
  float *gh = d.gh, *h = d.state;
  for (int b = 0; b < B; ++b) {
    std::fill(h, h + H, 0.0f);
    for (int step = 0; step < T; ++step) {
      const int t = d.reverse ? T - 1 - step : step;
      const float* gi = d.gi + ((size_t)b * T + t) * 3 * H;
      gemv(h, d.w, d.b, gh, H, 3 * H);
      float* o = d.out + ((size_t)b * T + t) * H;
      for (int j = 0; j < H; ++j) {
        const float r = 1.0f / (1.0f + std::exp(-(gi[j] + gh[j])));
        const float z = 1.0f / (1.0f + std::exp(-(gi[H + j] + gh[H + j])));
        const float n = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
        o[j] = h[j] = n + z * (h[j] - n);
      }
    }
    std::copy(h, h + H, d.h + (size_t)b * H);
  }
}

}  // namespace

PyObject* py_gru_scan(PyObject*, PyObject* args) {
  PyObject* seq;
  if (!PyArg_ParseTuple(args, "O", &seq)) return nullptr;
  PyObject* fast = PySequence_Fast(seq, "gru_scan: directions must be a sequence of (gi, w_hh, b_hh, out, h, reverse)");
  if (!fast) return nullptr;
  const Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
  std::vector<std::unique_ptr<Buffer>> held;
  std::vector<Direction> dirs;
  std::vector<std::vector<float>> scratch;
  int B = -1, T = -1, H = -1;
  bool ok = true;
  try {
    for (Py_ssize_t i = 0; i < count && ok; ++i) {
      PyObject *gi, *w, *b, *out, *h;
      int reverse;
      ok = PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "OOOOOp", &gi, &w, &b, &out, &h, &reverse);
      Buffer* bufs[5];
      for (auto& p : bufs) p = held.emplace_back(std::make_unique<Buffer>("gru_scan")).get();
      ok = ok && bufs[0]->get(gi, PyBUF_SIMPLE, "gi", 3) && bufs[1]->get(w, PyBUF_SIMPLE, "w_hh", 2) &&
           bufs[2]->get(b, PyBUF_SIMPLE, "b_hh", 1) && bufs[3]->get(out, PyBUF_WRITABLE, "out", 3) &&
           bufs[4]->get(h, PyBUF_WRITABLE, "h", 2);
      if (!ok) break;
      const Py_ssize_t *gs = bufs[0]->view.shape, *ws = bufs[1]->view.shape, *os = bufs[3]->view.shape,
                       *hs = bufs[4]->view.shape;
      if (i == 0) B = gs[0], T = gs[1], H = ws[0];
      if (gs[0] != B || gs[1] != T || gs[2] != 3 * H || ws[0] != H || ws[1] != 3 * H ||
          bufs[2]->view.shape[0] != 3 * H || os[0] != B || os[1] != T || os[2] != H || hs[0] != B || hs[1] != H) {
        PyErr_Format(PyExc_ValueError,
                     "gru_scan: direction %d: gi (%d, %d, %d), w_hh (%d, %d), out (%d, %d, %d), h (%d, %d) do not "
                     "fit gi (B, T, 3H), w_hh (H, 3H), b_hh (3H), out (B, T, H), h (B, H) with B=%d T=%d H=%d",
                     (int)i, (int)gs[0], (int)gs[1], (int)gs[2], (int)ws[0], (int)ws[1], (int)os[0], (int)os[1],
                     (int)os[2], (int)hs[0], (int)hs[1], B, T, H);
        ok = false;
        break;
      }
      auto& s = scratch.emplace_back(4 * (size_t)H);
      dirs.push_back({bufs[0]->data(), bufs[1]->data(), bufs[2]->data(), bufs[3]->mutable_data(),
                      bufs[4]->mutable_data(), reverse != 0, s.data(), s.data() + 3 * (size_t)H});
    }
  } catch (const std::bad_alloc&) {
    Py_DECREF(fast);
    return PyErr_NoMemory();
  }
  Py_DECREF(fast);  // the held buffers keep the arrays alive
  if (!ok) return nullptr;
  Py_BEGIN_ALLOW_THREADS
  share_items((long)dirs.size(), (int)dirs.size(), [&](int, long d) { scan(dirs[d], B, T, H); });
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}
