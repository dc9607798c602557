// Vector forms of fastmath's polynomials (rvc_mlx/fastmath.py) for the kernels: exp (Cephes expf), erf (a
// rational form on |x| <= 3.83) and torch's exact GELU, a vector of LANES float32 values at a time.
#pragma once
#include "kernels.h"

typedef int vi __attribute__((vector_size(LANES * 4), aligned(4)));

constexpr float LOG2E = 1.4426950408889634f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;

// x = n ln2 + r, |r| <= ln2/2; e^r by a degree-7 polynomial; 2^n as float32 exponent bits.
inline vf exp_v(vf x) {
  const vf lo = vf{} - 87.33654f, hi = vf{} + 88.0f, one = vf{} + 1.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf t = x * LOG2E + 0.5f;
  vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf);  // truncated toward zero
  n = n > t ? n - one : n;                                              // floor
  const vf r = x - n * LN2_HI - n * LN2_LO;
  vf p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf er = p * (r * r) + r + one;
  return er * (vf)((__builtin_convertvector(n, vi) + 127) << 23);
}

// erf(x) ~ x P(x^2) / Q(x^2), x clamped to +-3.8325 (erf is 1 in float32 beyond): fastmath's coefficients.
inline vf erf_v(vf x) {
  const vf lo = vf{} - 3.832506856900711f, hi = vf{} + 3.832506856900711f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf x2 = x * x;
  vf p = 2.2905065861350646e-4f * x2 + 3.4082910107109506e-3f;
  p = p * x2 + 5.0955695062380861e-2f;
  p = p * x2 + 1.8520832239976145e-1f;
  p = p * x2 + 1.128379143519084f;
  vf q = -1.1791602954361697e-7f * x2 + 2.3547966471313185e-5f;
  q = q * x2 + 1.0179625278914885e-3f;
  q = q * x2 + 1.4070470171167667e-2f;
  q = q * x2 + 1.1098505178285362e-1f;
  q = q * x2 + 4.9746925110067538e-1f;
  q = q * x2 + 1.0f;
  return x * p / q;
}

// torch's exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), in its operation order.
inline vf gelu_v(vf x) { return x * 0.5f * (1.0f + erf_v(x * 0.7071067811865476f)); }

inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < LANES; ++i) m = std::max(m, v[i]);
  return m;
}

// One row of n: y = softmax(x * scale), as fastmath computes it: s = x * scale (rounded), e = exp(s - max),
// y = e / sum(e). The tail that does not fill a vector is padded with -inf-like values whose exp is dropped.
inline void softmax_row(const float* x, float* y, int n, float scale) {
  const int whole = n - n % LANES;
  const vf low = vf{} - 3.0e38f;
  vf m = low;
  for (int i = 0; i < whole; i += LANES) {
    const vf s = *(const vf*)(x + i) * scale;
    m = s > m ? s : m;
  }
  vf tail = low;
  for (int i = whole; i < n; ++i) tail[i - whole] = x[i] * scale;
  m = tail > m ? tail : m;
  const float mx = hmax(m);
  vf acc{};
  for (int i = 0; i < whole; i += LANES) {
    const vf e = exp_v(*(const vf*)(x + i) * scale - mx);
    *(vf*)(y + i) = e;
    acc += e;
  }
  float sum = hsum(acc);
  if (whole < n) {
    const vf e = exp_v(tail - mx);
    for (int i = whole; i < n; ++i) {
      y[i] = e[i - whole];
      sum += e[i - whole];
    }
  }
  const vf s = vf{} + sum;
  for (int i = 0; i < whole; i += LANES) *(vf*)(y + i) = *(vf*)(y + i) / s;
  for (int i = whole; i < n; ++i) y[i] = y[i] / sum;
}
