// rvc_mlx._kernels_<isa>: CPU kernels MLX's Linux build lacks a fast form of (conv2d.cpp, depthwise.cpp, gru.cpp,
// elementwise.cpp, attention.cpp; worker threads: pool.cpp). setup.py compiles these sources once per ISA (avx512,
// avx2, generic) and names each build with -DRVC_KERNELS_ISA=<isa>; rvc_mlx.dispatch imports one only after
// rvc_mlx._cpu says the CPU runs it.
#include "kernels.h"

namespace {

PyMethodDef methods[] = {
    {"conv2d_nhwc", py_conv2d, METH_VARARGS,
     "conv2d_nhwc(x, w, bias, y, (pt, pl), (ho, wo), (oy, ox), (sy, sx)): y[b, oy + h*sy, ox + w*sx] = bias + "
     "sum over i, j of x[b, h + i - pt, w + j - pl] @ w[i, j] (zero outside x), h < ho, w < wo; x (B, H, W, C), "
     "w (kh, kw, C, O), y (B, Yh, Yw, O), float32 C-contiguous, O a multiple of LANES. Optional scale, shift, "
     "relu, residual: y = relu(y * scale + shift) + residual, as MLX computes BatchNorm -> ReLU -> add (relu 1; "
     "relu 2: y = relu(y) * scale + shift + residual, ReLU -> BatchNorm); dilation: "
     "along rows, tap j reads column w + j * dilation - pl; slope: x is read as max(x, x * slope) (leaky ReLU); "
     "(v0, v1): only input columns v0 <= w < v1 are read, the others as zeros; groups G: w is (G * kh, kw, C, O), "
     "bias (G * O), and batch b of x and y is group b mod G (x's channels and w's taps of that group); blocked: "
     "w's memory holds each group's weights in blocks of WEIGHT_BLOCK output channels (the last narrower), each "
     "block (kh, kw, C, width), as the kernel reads them (else the kernel makes that copy for the call)."},
    {"gru_scan", py_gru_scan, METH_VARARGS,
     "gru_scan(directions): for each (gi, w_hh, b_hh, out, h, reverse), gi (B, T, 3H) the input projections, "
     "w_hh (H, 3H), b_hh (3H): torch's GRU recurrence (gates r, z, n) from h = 0 over t (descending if reverse), "
     "out[b, t] = h_t (B, T, H), h = the last state (B, H); the directions run in parallel."},
    {"depthwise_conv1d", py_depthwise_conv1d, METH_VARARGS,
     "depthwise_conv1d(x, w, bias, y, padding, glu, silu): y[b, t, c] = bias[c] + sum over q of g[b, t + q - padding, "
     "c] * w[q, c] (zero outside x), g = x, or a * sigmoid(b) of x's channel halves if glu; then y * sigmoid(y) if "
     "silu. x (B, T, C or 2C), w (k, C), y (B, T + 2 * padding - k + 1, C), float32 C-contiguous, C a multiple "
     "of LANES."},
    {"softmax", py_softmax, METH_VARARGS,
     "softmax(x, y, scale): y[r] = softmax(x[r] * scale) for each row r of x (R, N); x, y float32 C-contiguous."},
    {"gelu", py_gelu, METH_VARARGS, "gelu(x, y): y = x * 0.5 * (1 + erf(x / sqrt 2)); x, y (N,) float32."},
    {"group_norm_gelu", py_group_norm_gelu, METH_VARARGS,
     "group_norm_gelu(x, gamma, beta, y, eps, gelu): per (batch, channel) over the L frames of x (B, L, C), "
     "y = (x - mean) / sqrt(var + eps) * gamma + beta, then GELU if gelu; C a multiple of LANES."},
    {"conv_group_norm_gelu", py_conv_group_norm_gelu, METH_VARARGS,
     "conv_group_norm_gelu(x, w, gamma, beta, y, stride, eps): h[b, t, c] = sum over j of x[b, t * stride + j] * "
     "w[j, c] (a one-channel conv, no bias, of x (B, N) by w (K, C)), then per (batch, channel) over the L = "
     "(N - K) / stride + 1 frames y = GELU((h - mean) / sqrt(var + eps) * gamma + beta); C a multiple of LANES."},
    {"layer_norm", py_layer_norm, METH_VARARGS,
     "layer_norm(x, residual, gamma, beta, y, eps): per row of x (R, N), h = x + residual (None: x), y = (h - mean) "
     "/ sqrt(var + eps) * gamma + beta; N a multiple of LANES, y may be x."},
    {"attention", py_attention, METH_VARARGS,
     "attention(q, k, v, out, heads, scale, rows): per batch and head (D = E / heads dims), out[b, t, head] = "
     "softmax over keys j of (q[b, t, head] . k[b, j, head]) * scale, times v[b, j, head]; q, k, v, out (B, T, E) "
     "float32 C-contiguous, D a multiple of 2 * LANES; `rows` query rows per work item."},
    {"linear", py_linear, METH_VARARGS,
     "linear(x, w, bias, y): y = bias + x w^T for x (M, K), w packed as (N / (2 * LANES), K, 2 * LANES) (panels of "
     "2 * LANES output columns), bias (N) or None, y (M, N); float32 C-contiguous."},
    {nullptr, nullptr, 0, nullptr}};

#ifndef RVC_KERNELS_ISA
#error "compile with -DRVC_KERNELS_ISA=<isa> (setup.py does)"
#endif
#define RVC_STR2(x) #x
#define RVC_STR(x) RVC_STR2(x)
#define RVC_CAT2(a, b) a##b
#define RVC_CAT(a, b) RVC_CAT2(a, b)

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels_" RVC_STR(RVC_KERNELS_ISA),
                      "CPU kernels MLX lacks a fast form of.", -1, methods};

}  // namespace

PyMODINIT_FUNC RVC_CAT(PyInit__kernels_, RVC_KERNELS_ISA)() {
  PyObject* m = PyModule_Create(&module);
  if (m && (PyModule_AddIntConstant(m, "LANES", LANES) != 0 ||
            PyModule_AddIntConstant(m, "WEIGHT_BLOCK", 4 * LANES) != 0 ||
            PyModule_AddIntConstant(m, "RELU_BEFORE_BN", RELU_BEFORE_BN) != 0 ||
            PyModule_AddStringConstant(m, "ISA", RVC_STR(RVC_KERNELS_ISA)) != 0)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
