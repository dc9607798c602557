// Shared by the rvc_mlx._kernels sources: vector type, Python buffer access, core count, entry points.
#pragma once
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <thread>
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
// worker threads (fewer if no thread can be had: work must share out its items, e.g. by an atomic counter).
void parallel(int n, const std::function<void(int)>& work);

// Runs item(i) for i in [0, total) on up to cores() threads.
template <class F>
void share(long total, F item) {
  const int n = (int)std::max(1L, std::min<long>(total, cores()));
  std::atomic<long> next{0};
  parallel(n, [&](int) {
    for (long i; (i = next.fetch_add(1, std::memory_order_relaxed)) < total;) item(i);
  });
}

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
