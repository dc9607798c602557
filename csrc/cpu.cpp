// rvc_mlx._cpu: which ISA features this CPU and OS support (CPUID, and XGETBV for the OS's vector state), asked
// before any kernel build is loaded. Compiled for the baseline ISA: importing it can never fault, whereas loading
// an AVX-512 build on an AVX2 CPU may (its static initialisers can already use the wide registers).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace {

PyObject* features(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  if (!out) return nullptr;
  auto add = [&](const char* name, bool on) {
    if (!on) return 0;
    PyObject* s = PyUnicode_FromString(name);
    int rc = s ? PyList_Append(out, s) : -1;
    Py_XDECREF(s);
    return rc;
  };
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports needs literal names; the kernels' builds need these (setup.py, dispatch.NEEDS)
  if (add("avx2", __builtin_cpu_supports("avx2")) || add("fma", __builtin_cpu_supports("fma")) ||
      add("avx512f", __builtin_cpu_supports("avx512f")) || add("avx512dq", __builtin_cpu_supports("avx512dq")) ||
      add("avx512bw", __builtin_cpu_supports("avx512bw")) || add("avx512vl", __builtin_cpu_supports("avx512vl"))) {
    Py_DECREF(out);
    return nullptr;
  }
#endif
  return out;
}

PyMethodDef methods[] = {
    {"features", features, METH_NOARGS,
     "features() -> list of the ISA features (avx2, fma, avx512f, avx512dq, avx512bw, avx512vl) this CPU runs."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", "ISA features of this CPU (CPUID).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__cpu() { return PyModule_Create(&module); }
