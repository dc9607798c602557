// Shared by the rvc_mlx._kernels sources: vector type, Python buffer access, core count, entry points.
#pragma once
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#ifdef __linux__
#include <sched.h>
#endif

#if defined(__AVX512F__)
constexpr int LANES = 16;
#elif defined(__AVX__)
constexpr int LANES = 8;
#else
constexpr int LANES = 4;
#endif
typedef float vf __attribute__((vector_size(LANES * 4), aligned(4)));  // aligned(4): unaligned loads/stores

// The register block of the GEMM-shaped kernels (attention.cpp, gemm.cpp): BLOCK_ROWS rows x BLOCK_VECTORS vectors
// of accumulators fill the vector registers but for the loaded vectors and the broadcast value (24 of 32 zmm, 12 of
// 16 ymm); the broadcast operand is packed (k, BLOCK_ROWS) so that it is read at fixed offsets from one pointer.
#if defined(__AVX512F__)
constexpr int BLOCK_ROWS = 12;
#else
constexpr int BLOCK_ROWS = 6;
#endif
constexpr int BLOCK_VECTORS = 2;

// A held Python buffer of a C-contiguous float32 array; errors name the calling function and the argument.
struct Buffer {
  const char* fn;
  Py_buffer view{};
  bool held = false;
  explicit Buffer(const char* function) : fn(function) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (held) PyBuffer_Release(&view);
  }
  bool get(PyObject* obj, int flags, const char* name, int ndim) {
    if (PyObject_GetBuffer(obj, &view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return false;
    held = true;
    if (view.itemsize != 4 || !view.format || std::strcmp(view.format, "f") != 0 || view.ndim != ndim) {
      PyErr_Format(PyExc_ValueError, "%s: %s must be a C-contiguous float32 array of %d dims", fn, name, ndim);
      return false;
    }
    return true;
  }
  const float* data() const { return static_cast<const float*>(view.buf); }
  float* mutable_data() const { return static_cast<float*>(view.buf); }
};

// Cores this process may run on (its affinity mask: a container's limit, not the host's count).
inline long cores() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs work(0) .. work(n - 1) at once (pool.cpp): work(0) on the calling thread, the others on the kernels' kept
// worker threads (fewer if no thread can be had: work must share out its items, as Shares below does).
void parallel(int n, const std::function<void(int)>& work);

// Work items [0, total), total < 2^31 (items are blocks of work), for n workers: worker w owns the contiguous
// share [w * total / n, (w + 1) * total / n) and takes its items from the front; a worker whose share is done
// takes from the back of the others', so that a core slowed by another process's thread only slows its own items.
// Items handed out in turn (one shared counter) put neighbouring channel blocks of the same pixels on different
// cores: RMVPE at 10 s ran 4% slower that way, its AVX2 build 9% (interleaved A/B, AMD Zen 5).
class Shares {
 public:
  Shares(long total, int n) : shares_(std::max(1, n)) {
    const int k = (int)shares_.size();
    for (int w = 0; w < k; ++w) shares_[w].range.store(pack(w * total / k, (w + 1) * total / k));
  }
  // The next item for worker w, or -1 when none is left.
  long take(int w) {
    const int k = (int)shares_.size();
    for (int i = 0; i < k; ++i) {
      const long item = pop(shares_[(w + i) % k], i == 0);
      if (item >= 0) return item;
    }
    return -1;
  }

 private:
  struct alignas(64) Share {  // [front, back) packed in one word, so that both ends move by one atomic
    std::atomic<unsigned long long> range{0};
  };
  static unsigned long long pack(long front, long back) {
    return (unsigned long long)front << 32 | (unsigned long long)(unsigned)back;
  }
  static long pop(Share& s, bool front) {
    unsigned long long r = s.range.load(std::memory_order_relaxed);
    for (;;) {
      const long a = (long)(r >> 32), b = (long)(unsigned)r;
      if (a >= b) return -1;
      if (s.range.compare_exchange_weak(r, front ? pack(a + 1, b) : pack(a, b - 1), std::memory_order_relaxed))
        return front ? a : b - 1;
    }
  }
  std::vector<Share> shares_;
};

// Workers for `total` items: one per core, no more than items.
inline int workers_for(long total) { return (int)std::max(1L, std::min(total, cores())); }

// Runs work(worker, item) for each item in [0, total) once, on n workers (Shares: each worker's items contiguous);
// worker < n indexes per-worker scratch.
template <class F>
void share_items(long total, int n, F work) {
  Shares shares(total, n);
  parallel(n, [&](int w) {
    for (long i; (i = shares.take(w)) >= 0;) work(w, i);
  });
}

// Runs item(i) for i in [0, total) on up to cores() threads.
template <class F>
void share(long total, F item) {
  share_items(total, workers_for(total), [&](int, long i) { item(i); });
}

// The conv kernel's epilogue ReLU (conv2d_nhwc's `relu`; the module exports RELU_BEFORE_BN for rvc_mlx).
enum Relu { NO_RELU = 0, RELU_AFTER_BN = 1, RELU_BEFORE_BN = 2 };

PyObject* py_conv2d(PyObject*, PyObject* args);
PyObject* py_depthwise_conv1d(PyObject*, PyObject* args);
PyObject* py_gru_scan(PyObject*, PyObject* args);
PyObject* py_softmax(PyObject*, PyObject* args);
PyObject* py_gelu(PyObject*, PyObject* args);
PyObject* py_group_norm_gelu(PyObject*, PyObject* args);
PyObject* py_conv_group_norm_gelu(PyObject*, PyObject* args);
PyObject* py_attention(PyObject*, PyObject* args);
PyObject* py_linear(PyObject*, PyObject* args);
PyObject* py_layer_norm(PyObject*, PyObject* args);
