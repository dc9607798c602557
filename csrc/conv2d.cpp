// Direct 2-D convolution for MLX's CPU device (rvc_mlx._kernels): NHWC float32, stride 1, dilation 1; groups as
// batches (batch b of x holds group b mod G's channels and is convolved by group b mod G's weights).
//
// MLX's CPU conv2d (im2col + one GEMM) and the shifted-GEMM sums in layers.py run RMVPE's 16-128 channel 3x3
// convs at 40-110 GFLOP/s: each thin GEMM packs its input and re-reads its accumulator. This kernel keeps a block
// of output pixels x output channels in vector registers for the whole kh*kw*C reduction (~190-260 GFLOP/s on
// 2 AVX-512 cores, near torch's oneDNN). Summation per output: for each pass over 32 input channels
// (CHANNEL_STEP; kernels longer than 16 taps: and 8 taps, TAP_STEP), taps (i, j) row-major and the pass's channels
// in order with fused multiply-adds (the first pass starts from the bias, the others from zero), each pass's sum
// added to the running total.
#include "kernels.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// What happens to each output vector after the reduction, in MLX's order of ops: BatchNorm's x * scale + shift
// (a multiply and an add, not contracted, as MLX's compiled kernel computes it), ReLU, then + residual; or ReLU
// before the BatchNorm (CREPE's conv, ReLU, BatchNorm).
struct Epilogue {
  const float* scale = nullptr;     // (O) or null
  const float* shift = nullptr;     // (O), with scale
  int relu = NO_RELU;
  const float* residual = nullptr;  // laid out as y, or null
};

// What happens to each input value as it is copied into a window: leaky ReLU max(v, v * slope) (MLX's form, so
// that a fused resblock conv rounds as leaky_relu then conv), and which input columns are read (the others as
// zeros: a time chunk's frames beyond the signal).
struct Prologue {
  bool leaky = false;
  float slope = 0;
  int v0 = 0, v1 = 0;  // input columns [v0, v1) are read
};

struct Shape {
  int C, O, kh, kw, dw;  // dw: dilation along rows (1-D convs)
  size_t rowlen;   // floats per padded input row in the window buffer: window columns * C
  size_t ostride;  // floats from one output pixel of a row to the next: sx * O
  Epilogue post;
  Prologue pre;
  const float* y0;  // start of y, for the residual's matching offset
  int c0 = 0, c1 = 0;  // the input channels this pass sums ...
  int j0 = 0, j1 = 0;  // ... over these taps along rows; a pass after the first adds to the partial sums in y
  int cols = 0;        // window columns (rowlen / C)
  bool first() const { return c0 == 0 && j0 == 0; }
  bool last() const { return c1 >= C && j1 >= kw; }
};

// Where the pixels of a block are: consecutive in one row (Row), or anywhere in a window of rows (List: narrow
// images, where one row holds too few pixels to reuse each weight vector). Row: in(p) is the pixel's window
// column, the window in channel blocks (fill_row); List: in(p) is the pixel's offset in a channels-last window.
struct Row {
  static constexpr bool blocked = true;
  size_t first, ostride;
  size_t in(int p) const { return first + p; }
  size_t out(int p) const { return (first + p) * ostride; }
  Row advance(int p0) const { return {first + p0, ostride}; }
};
struct List {
  static constexpr bool blocked = false;
  const size_t *ioff, *ooff;
  size_t in(int p) const { return ioff[p]; }
  size_t out(int p) const { return ooff[p]; }
  List advance(int p0) const { return {ioff + p0, ooff + p0}; }
};

// Input channels summed per pass over a window's pixels (each pass from zero, added to the running total): the
// pass's weights for 4 vectors of output channels
// (kh * kw * 32 * 64 floats, 72 KiB for 3x3) then stay in L2 while every pixel block reads them (RMVPE's
// 512-channel convs on 32x4 pixels: 8.9 -> 4 ms).
constexpr int CHANNEL_STEP = 32;

// The weights in blocks of BLOCK output channels (the last block narrower): block b, (kh, kw, C, width), at
// b * BLOCK * kh * kw * C. A pass then reads one contiguous stretch of weights; in (kh, kw, C, O) order its rows
// were O floats apart (2 KiB for 512 channels) and fell into a few L1 sets. With the blocked Row windows:
// 1-D convs of 192-512 channels 20% faster (Intel AVX-512), the same sums in the same order.
constexpr int BLOCK = 4 * LANES;

// PW output pixels x NB vectors of output channels (from channel ob), all in registers for the whole reduction.
template <int PW, int NB, class At>
inline void pixel_block(const float* __restrict in, const Shape& s, const float* __restrict w,
                        const float* __restrict bias, float* __restrict out, At at, int ob) {
  const int block = ob / BLOCK, width = std::min(BLOCK, s.O - block * BLOCK);
  w += (size_t)block * BLOCK * s.kh * s.kw * s.C + (ob - block * BLOCK);
  vf acc[PW][NB];
  for (int n = 0; n < NB; ++n) {
    const vf b0 = bias && s.first() ? *(const vf*)(bias + ob + n * LANES) : vf{};
#pragma GCC unroll 32
    for (int p = 0; p < PW; ++p) acc[p][n] = b0;
  }
  // a Row window's pass reads one channel block: cw floats per column, from c0 * cols
  const int cw = At::blocked ? std::min(CHANNEL_STEP, s.C - s.c0) : 1;
  if constexpr (At::blocked) in += (size_t)s.c0 * s.cols - s.c0;
  for (int i = 0; i < s.kh; ++i)
    for (int j = s.j0; j < s.j1; ++j) {
      const float* xr = in + i * s.rowlen + (size_t)j * s.dw * (At::blocked ? cw : s.C);
      const float* wr = w + (size_t)(i * s.kw + j) * s.C * width;
      for (int c = s.c0; c < s.c1; ++c) {
        vf wv[NB];
        for (int n = 0; n < NB; ++n) wv[n] = *(const vf*)(wr + (size_t)c * width + n * LANES);
#pragma GCC unroll 32
        for (int p = 0; p < PW; ++p) {
          const float v = xr[at.in(p) * cw + c];
          for (int n = 0; n < NB; ++n) acc[p][n] += v * wv[n];
        }
      }
    }
  // each pass sums from zero, then adds to the total: a two-level sum, as blocked GEMMs do (one sequential sum
  // over C = 1024 was 1.5x less accurate than OpenBLAS on FCPE)
  if (!s.first())
    for (int p = 0; p < PW; ++p)
      for (int n = 0; n < NB; ++n) acc[p][n] = *(const vf*)(out + at.out(p) + ob + n * LANES) + acc[p][n];
  const Epilogue& e = s.post;
  if (!s.last()) {  // partial sums: the next pass adds to them
    for (int p = 0; p < PW; ++p)
      for (int n = 0; n < NB; ++n) *(vf*)(out + at.out(p) + ob + n * LANES) = acc[p][n];
    return;
  }
  for (int p = 0; p < PW; ++p)
    for (int n = 0; n < NB; ++n) {
      vf v = acc[p][n];
      const size_t at_out = at.out(p) + ob + n * LANES;
      if (e.relu == RELU_BEFORE_BN) v = v > 0 ? v : vf{};
      if (e.scale) {
        v *= *(const vf*)(e.scale + ob + n * LANES);
        asm("" : "+v"(v));  // keeps the multiply's rounding: no fused multiply-add with the shift
        v += *(const vf*)(e.shift + ob + n * LANES);
      }
      if (e.relu == RELU_AFTER_BN) v = v > 0 ? v : vf{};
      if (e.residual) v += *(const vf*)(e.residual + (out - s.y0) + at_out);
      *(vf*)(out + at_out) = v;
    }
}

// `count` pixels for channels [ob, ob + NB * LANES): blocks of PW pixels, the remainder in halving widths.
template <int PW, int NB, class At>
void pixels(const float* in, const Shape& s, const float* w, const float* bias, float* out, At at, int count,
            int ob) {
  int p0 = 0;
  for (; p0 + PW <= count; p0 += PW) pixel_block<PW, NB>(in, s, w, bias, out, at.advance(p0), ob);
  if constexpr (PW > 1)
    if (count > p0) pixels<(PW + 1) / 2, NB>(in, s, w, bias, out, at.advance(p0), count - p0, ob);
}

// Long kernels also sum their taps in passes of TAP_STEP (HuBERT's positional conv, 128 taps of 48 channels: one
// sequential sum over 4096 products per pass was 6x less accurate than torch's float32 conv; passes of 8 x 32).
constexpr int LONG_KERNEL = 16, TAP_STEP = 8;

template <int PW, int NB, class At>
void channel_passes(const float* in, Shape s, const float* w, const float* bias, float* out, At at, int count,
                    int ob) {
  const int tap_step = s.kw > LONG_KERNEL ? TAP_STEP : s.kw;
  for (s.j0 = 0; s.j0 < s.kw; s.j0 = s.j1) {
    s.j1 = std::min(s.kw, s.j0 + tap_step);
    for (s.c0 = 0; s.c0 < s.C; s.c0 = s.c1) {
      s.c1 = std::min(s.C, s.c0 + CHANNEL_STEP);
      pixels<PW, NB>(in, s, w, bias, out, at, count, ob);
    }
  }
}

// Pixels per block for 4, 2 and 1 vectors of output channels: the accumulators fill the vector registers but for
// the weights and the broadcast input. AVX-512 has 32 (24 accumulators); AVX2 and SSE have 16 (12 accumulators,
// else they spill), where 4-vector blocks of 3 pixels ran slower than 2-vector blocks of 6 (AMD Zen 3): none.
#if defined(__AVX512F__)
constexpr int PW4 = 6, PW2 = 12, PW1 = 16;
#else
constexpr int PW4 = 0, PW2 = 6, PW1 = 12;
#endif

// Output channels [o0, o1) of `count` pixels; wider channel blocks reuse each broadcast input value for more FMAs.
template <class At>
void channels(const float* in, const Shape& s, const float* w, const float* bias, float* out, At at, int count,
              int o0, int o1) {
  int ob = o0;
  if constexpr (PW4 > 0)
    for (; ob + 4 * LANES <= o1; ob += 4 * LANES) channel_passes<PW4, 4>(in, s, w, bias, out, at, count, ob);
  for (; ob + 2 * LANES <= o1; ob += 2 * LANES) channel_passes<PW2, 2>(in, s, w, bias, out, at, count, ob);
  for (; ob < o1; ob += LANES) channel_passes<PW1, 1>(in, s, w, bias, out, at, count, ob);
}

// Output pixel (h, w), h < ho, w < wo, reads input pixels (h + i - pt, w + j * dw - pl) (zero outside x), is stored
// at y[b, oy + h * sy, ox + w * sx]: a plain conv (s = 1, o = 0), or one output phase of a transposed conv.
struct Placement {
  int pt, pl, ho, wo, oy, ox, sy, sx, Yh, Yw;
};

// Rows narrower than this are computed a window of rows at a time (List addressing); rows wider than TILE (1-D
// convs: one row of thousands of frames) in tiles of TILE pixels, so that every core gets work.
constexpr int NARROW = 32;
constexpr int TILE = 512;
// Narrow images: output pixels per window of rows; each window's work is split into chunks of 4 vectors of output
// channels (work items for the cores), and a chunk's weights are read once per window. 32-pixel windows read
// weights from L2/L3 as fast as the FMAs use them; 256 pixels reuse them 8x more (RMVPE's 256 ch on 64 x 8:
// 2.65 -> 2.05 ms, 512 ch on 32 x 4: 3.0 -> 2.3 ms; 128 and 512 measured the same or slower).
constexpr int WINDOW = 256;

// n values of src, read through the prologue (leaky ReLU), to d; then zeros up to `width`.
inline void copy_values(float* d, const float* src, size_t n, size_t width, const Prologue& pre) {
  if (pre.leaky) {
    for (size_t k = 0; k < n; ++k) {
      const float v = src[k], v_slope = v * pre.slope;
      d[k] = v > v_slope ? v : v_slope;
    }
  } else if (n == CHANNEL_STEP) {  // a whole channel block (most calls): vector moves, not a call
    for (int k = 0; k < CHANNEL_STEP; k += LANES) *(vf*)(d + k) = *(const vf*)(src + k);
  } else if (n) {
    std::memcpy(d, src, sizeof(float) * n);
  }
  if (width > n) std::memset(d + n, 0, sizeof(float) * (width - n));
}

// Window row dst of wb columns x C channels from input row src: window column u holds input column u + col0 for
// lo <= u < hi, zeros elsewhere. Blocked (Row windows): the channels in blocks of CHANNEL_STEP, block cb (wb
// columns x its width) at cb * wb, so that a pass reads one contiguous block; channels-last, a pass over 32 of
// 512 channels read 128 bytes of every 2 KiB (1-D convs of 192-512 channels: 20% faster blocked).
void fill_row(float* dst, const float* src, long col0, int lo, int hi, int wb, int C, const Prologue& pre,
              bool blocked) {
  if (!blocked) {
    std::memset(dst, 0, sizeof(float) * lo * C);
    copy_values(dst + (size_t)lo * C, src + (col0 + lo) * C, (size_t)(hi - lo) * C, (size_t)(wb - lo) * C, pre);
    return;
  }
  for (int cb = 0; cb < C; cb += CHANNEL_STEP) {
    const int width = std::min(CHANNEL_STEP, C - cb);
    float* d = dst + (size_t)cb * wb;
    for (int u = 0; u < wb; ++u, d += width) {
      const bool read = u >= lo && u < hi;
      copy_values(d, read ? src + (col0 + u) * C + cb : src, read ? width : 0, width, pre);
    }
  }
}

// x (B, H, W, C); w (G, kh, kw, C, O) in blocks (in_blocks); bias (G, O) or null; y (B, Yh, Yw, O). O must be
// a multiple of LANES.
void conv2d(const float* x, int B, int H, int W, const float* w, const float* bias, float* y, Shape s,
            const Placement& q, int G) {
  const size_t group_taps = (size_t)s.kh * s.kw * s.C * s.O;  // one group's weights
  const int R = q.wo >= NARROW ? 1 : std::min(q.ho, (WINDOW + q.wo - 1) / q.wo);  // output rows per window
  const int tw = R == 1 ? std::min(q.wo, TILE) : q.wo;               // output columns per window
  const int groups = (q.ho + R - 1) / R, tiles = (q.wo + tw - 1) / tw;
  const int wb = tw + (s.kw - 1) * s.dw;  // window columns; column u of tile t holds input column t*tw + u - pl
  s.rowlen = (size_t)wb * s.C;
  s.cols = wb;
  // One worker per core (pool.cpp), each taking its contiguous share of the work items (Shares, kernels.h).
  const int chunk = R == 1 ? s.O : 4 * LANES, chunks = (s.O + chunk - 1) / chunk;
  const long total = (long)B * groups * tiles * chunks;  // work items: (window, chunk of output channels)
  const int n = workers_for(total);
  // per worker: the kh + R - 1 input rows of a window, zero-padded (the pixel blocks then never test bounds),
  // and the pixel offsets of a window; allocated here, where std::bad_alloc reaches the caller
  std::vector<std::vector<float>> bufs(n, std::vector<float>((size_t)(s.kh + R - 1) * s.rowlen));
  std::vector<std::vector<size_t>> offsets(n, std::vector<size_t>((size_t)2 * R * tw));
  std::vector<long> filled(n, -1);  // the window in each worker's buf
  share_items(total, n, [&](int worker, long item) {
    float* buf = bufs[worker].data();
    size_t* offs = offsets[worker].data();
    const long g = item / chunks;
    const int o0 = (int)(item % chunks) * chunk, o1 = std::min(s.O, o0 + chunk);
    const int tile = g % tiles, b = g / tiles / groups, h0 = (g / tiles % groups) * R;
    const int rows = std::min(R, q.ho - h0), t0 = tile * tw, cols = std::min(tw, q.wo - t0);
    const int lo = std::clamp(q.pl - t0 + s.pre.v0, 0, wb), hi = std::clamp(q.pl - t0 + s.pre.v1, lo, wb);
    for (int i = 0; i < rows + s.kh - 1 && filled[worker] != g; ++i) {
      float* dst = buf + i * s.rowlen;
      const int row_in = h0 + i - q.pt;
      if (row_in < 0 || row_in >= H) {
        std::memset(dst, 0, sizeof(float) * s.rowlen);
        continue;
      }
      fill_row(dst, x + (size_t)(b * H + row_in) * W * s.C, t0 - q.pl, lo, hi, wb, s.C, s.pre, R == 1);
    }
    filled[worker] = g;
    float* out = y + ((size_t)(b * q.Yh + q.oy + h0 * q.sy) * q.Yw + q.ox) * s.O + t0 * s.ostride;
    const float* wg = w + (size_t)(b % G) * group_taps;
    const float* bg = bias ? bias + (size_t)(b % G) * s.O : nullptr;
    if (R == 1) {
      channels(buf, s, wg, bg, out, Row{0, s.ostride}, cols, o0, o1);
      return;
    }
    size_t *ioff = offs, *ooff = offs + R * tw;
    for (int r = 0, p = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c, ++p) {
        ioff[p] = r * s.rowlen + (size_t)c * s.C;
        ooff[p] = (size_t)r * q.sy * q.Yw * s.O + c * s.ostride;
      }
    channels(buf, s, wg, bg, out, List{ioff, ooff}, rows * cols, o0, o1);
  });
}

// G groups of (rows, O) weights, each in blocks of BLOCK output channels.
std::vector<float> in_blocks(const float* w, int G, size_t rows, int O) {
  std::vector<float> out((size_t)G * rows * O);
  float* dst = out.data();
  for (int g = 0; g < G; ++g, w += rows * O)
    for (int b = 0; b < O; b += BLOCK) {
      const int width = std::min(BLOCK, O - b);
      for (size_t r = 0; r < rows; ++r, dst += width) std::memcpy(dst, w + r * O + b, sizeof(float) * width);
    }
  return out;
}

}  // namespace

PyObject* py_conv2d(PyObject*, PyObject* args) {
  PyObject *xo, *wo, *bo, *yo, *so = Py_None, *ho = Py_None, *ro = Py_None;
  int relu = 0, dilation = 1, G = 1, blocked = 0;
  PyObject* slope_o = Py_None;
  Placement q;
  Prologue pre{false, 0, INT_MIN, INT_MAX};
  if (!PyArg_ParseTuple(args, "OOOO(ii)(ii)(ii)(ii)|OOiOiO(ii)ip", &xo, &wo, &bo, &yo, &q.pt, &q.pl, &q.ho, &q.wo,
                        &q.oy, &q.ox, &q.sy, &q.sx, &so, &ho, &relu, &ro, &dilation, &slope_o, &pre.v0, &pre.v1, &G,
                        &blocked))
    return nullptr;
  if (slope_o != Py_None) {
    pre.leaky = true;
    pre.slope = (float)PyFloat_AsDouble(slope_o);
    if (PyErr_Occurred()) return nullptr;
  }
  Buffer xb("conv2d_nhwc"), wb("conv2d_nhwc"), bb("conv2d_nhwc"), yb("conv2d_nhwc"), sb("conv2d_nhwc"),
      hb("conv2d_nhwc"), rb("conv2d_nhwc");
  if (!xb.get(xo, PyBUF_SIMPLE, "x", 4) || !wb.get(wo, PyBUF_SIMPLE, "w", 4) ||
      (bo != Py_None && !bb.get(bo, PyBUF_SIMPLE, "bias", 1)) || !yb.get(yo, PyBUF_WRITABLE, "y", 4) ||
      (so != Py_None && !sb.get(so, PyBUF_SIMPLE, "scale", 1)) ||
      (ho != Py_None && !hb.get(ho, PyBUF_SIMPLE, "shift", 1)) ||
      (ro != Py_None && !rb.get(ro, PyBUF_SIMPLE, "residual", 4)))
    return nullptr;
  const int O_ = wb.view.shape[3];
  bool epilogue_ok = (so == Py_None) == (ho == Py_None) && (so == Py_None || (sb.view.shape[0] == O_ &&
                     hb.view.shape[0] == O_));
  for (int d = 0; d < 4 && ro != Py_None; ++d) epilogue_ok = epilogue_ok && rb.view.shape[d] == yb.view.shape[d];
  if (!epilogue_ok) {
    PyErr_SetString(PyExc_ValueError, "conv2d_nhwc: scale and shift must both be (O,), and the residual shaped as y");
    return nullptr;
  }
  const Py_ssize_t *xs = xb.view.shape, *ws = wb.view.shape, *ys = yb.view.shape;
  if (G < 1 || ws[0] % G || xs[0] % G || (G > 1 && so != Py_None)) {
    PyErr_Format(PyExc_ValueError, "conv2d_nhwc: %d groups need w's first axis (%d) and the batch (%d) in whole "
                 "groups, and no BatchNorm epilogue", G, (int)ws[0], (int)xs[0]);
    return nullptr;
  }
  const int B = xs[0], H = xs[1], W = xs[2], C = xs[3], kh = ws[0] / G, kw = ws[1], O = ws[3];
  q.Yh = ys[1];
  q.Yw = ys[2];
  if (ws[2] != C || O % LANES || ys[0] != B || ys[3] != O || (bo != Py_None && bb.view.shape[0] != G * O) ||
      dilation < 1 || q.ho < 1 || q.wo < 1 || q.sy < 1 || q.sx < 1 || q.oy < 0 || q.ox < 0 || q.oy + (q.ho - 1) * q.sy >= q.Yh ||
      q.ox + (q.wo - 1) * q.sx >= q.Yw) {
    PyErr_Format(PyExc_ValueError,
                 "conv2d_nhwc: x (%d, %d, %d, %d), w (%d, %d, %d, %d), y (%d, %d, %d, %d) and %dx%d outputs from "
                 "(%d, %d) in steps (%d, %d) do not fit (w is (kh, kw, C, O) with O a multiple of %d)",
                 B, H, W, C, kh, kw, (int)ws[2], O, (int)ys[0], q.Yh, q.Yw, (int)ys[3], q.ho, q.wo, q.oy, q.ox, q.sy,
                 q.sx, LANES);
    return nullptr;
  }
  if (relu < NO_RELU || relu > RELU_BEFORE_BN) {
    PyErr_Format(PyExc_ValueError, "conv2d_nhwc: relu is 0 (none), 1 (after the BatchNorm) or 2 (before it), got %d",
                 relu);
    return nullptr;
  }
  Epilogue post{so == Py_None ? nullptr : sb.data(), ho == Py_None ? nullptr : hb.data(), relu,
                ro == Py_None ? nullptr : rb.data()};
  pre.v0 = std::clamp(pre.v0, 0, W);
  pre.v1 = std::clamp(pre.v1, pre.v0, W);
  Shape s{C, O, kh, kw, dilation, 0, (size_t)q.sx * O, post, pre, static_cast<float*>(yb.view.buf)};
  const float* bias = bo == Py_None ? nullptr : bb.data();
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    std::vector<float> copy;  // the weights in blocks, unless the caller gave them so (rvc_mlx keeps them packed)
    if (!blocked) copy = in_blocks(wb.data(), G, (size_t)kh * kw * C, O);
    conv2d(xb.data(), B, H, W, blocked ? wb.data() : copy.data(), bias, static_cast<float*>(yb.view.buf), s, q,
           G);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) return PyErr_NoMemory();
  Py_RETURN_NONE;
}

