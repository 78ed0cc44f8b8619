// Branch-free float exp / expm1 / log / log1p for the CPU hot loops.
//
// libm's expf/logf are calls the vectoriser cannot inline, so a `#pragma omp simd` loop that uses them
// runs one lane at a time. These are plain inline arithmetic on floats and int32 bit patterns (every
// "branch" is a select), so GCC vectorises them at whatever width the target_clones pick (SSE2, AVX2,
// AVX-512). Accuracy: ~1-2 ulp on the normal range (Cephes-style range reduction and minimax
// polynomials; the coefficients are the published Cephes ones). Special values: exp(-inf) = 0,
// exp(x < -87.3) flushes to 0 (no denormal results), exp(+inf or x > 88.7) = inf, log(0) = -inf,
// log(x < 0) = NaN, log(inf) = inf, NaN propagates. Denormal inputs to log are rescaled first.
//
// The Math policy structs let the categorical divergence forms in divergences.h be written once and
// evaluated either with these (CPU, VecMath) or with libm / CUDA intrinsics (StdMath).
#pragma once

#include <cstdint>
#include <cstring>

#include "platform.h"

namespace fdiv_ops {

// Math through libm on the host and CUDA's math library on the device (double precision and CUDA).
struct StdMath {
  template <typename T>
  static FDIV_HD T exp(T x) {
    return fexp(x);
  }
  template <typename T>
  static FDIV_HD T expm1(T x) {
    return fexpm1(x);
  }
  template <typename T>
  static FDIV_HD T log(T x) {
    return flog(x);
  }
  template <typename T>
  static FDIV_HD T log1p(T x) {
    return flog1p(x);
  }
  // exp of x <= 0 and log1p of x in [0, 1]: the restricted forms some policies make cheaper (VecMath)
  template <typename T>
  static FDIV_HD T exp_neg(T x) {
    return fexp(x);
  }
  template <typename T>
  static FDIV_HD T log1p_unit(T x) {
    return flog1p(x);
  }
};

#if !defined(__CUDACC__)
namespace vec {

#define FDIV_VEC_INLINE inline __attribute__((always_inline))

FDIV_VEC_INLINE float as_float(int32_t i) { return __builtin_bit_cast(float, i); }
FDIV_VEC_INLINE int32_t as_int(float f) { return __builtin_bit_cast(int32_t, f); }

FDIV_VEC_INLINE float exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float xc = x < -88.0f ? -88.0f : (x > 88.75f ? 88.75f : x);
  const float t = xc * kLog2e + kShift;
  const int32_t n = as_int(t) - as_int(kShift);
  const float fn = t - kShift;
  const float r = (xc - fn * kLn2Hi) - fn * kLn2Lo;  // |r| <= ln2 / 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = (p * r) * r + r + 1.0f;
  const float y = e * as_float((n + 126) << 23) * 2.0f;  // 2^(n-1) * 2: n = 128 stays representable
  float out = x < -87.33654f ? 0.0f : y;
  out = x > 88.72283f ? __builtin_inff() : out;
  return x != x ? x : out;
}

// 2^w for the row passes of the token kernels, whose arguments are scaled logits minus their block maximum
// (w <= 0, finite, or -inf for a masked entry): base 2, so the caller folds log2(e) into the logit scaling it
// does anyway (one FMA per entry) and the reduction r = w - round(w) is exact (no Cody-Waite split). Only the
// lower end is clamped (w >= -125, one max), and w < -125 flushes to 0 (no denormal results: 2^-125 is below
// any probability that moves a float32 sum). A NaN w gives NaN (the clamp keeps it and the product with the
// scale propagates it): the row kernels find NaN entries from the NaN their block sum then holds. Positive w
// is outside the contract. Polynomial: 2^r = 1 + r P(r) on |r| <= 1/2, degree 6, fitted for this file
// (relative fit error 2e-9; 0.8 ulp in float32 with the rounding).
FDIV_VEC_INLINE float exp2_bounded(float w) {
  constexpr float kShift = 12582912.0f;        // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float wc = w < -125.0f ? -125.0f : w;  // written so that NaN passes (one vmaxps)
  const float t = wc + kShift;
  const float r = wc - (t - kShift);  // exact, |r| <= 1/2
  float p = 1.5353357594e-4f;
  p = p * r + 1.3398875017e-3f;
  p = p * r + 9.6184378490e-3f;
  p = p * r + 5.5503323674e-2f;
  p = p * r + 2.4022647738e-1f;
  p = p * r + 6.9314718246e-1f;
  // 2^n from the low bits of t (n in [-125, 0]): (n + 127) << 23, the integer add folded into one constant
  const float scale = as_float((as_int(t) - (as_int(kShift) - 127)) << 23);
  const float y = (r * p + 1.0f) * scale;
  return w < -125.0f ? 0.0f : y;
}

// exp(x) - 1 without cancellation for small |x| (Taylor to degree 8 on |x| < 0.35: error < 1e-9 x).
FDIV_VEC_INLINE float expm1(float x) {
  float p = 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  const float small = (p * x) * x + x;
  const float ax = x < 0.0f ? -x : x;
  return ax < 0.3466f ? small : exp(x) - 1.0f;
}

// log(2^e (1 + m)) for a reduced argument m in [sqrt(1/2) - 1, sqrt(2) - 1): the Cephes-style core shared by
// log and log1p_unit.
FDIV_VEC_INLINE float log_reduced(float m, float e) {
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = m * z * p;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

FDIV_VEC_INLINE float log(float x) {
  constexpr float kSqrtHalf = 0.707106781186547524f;
  const bool denormal = x < 1.17549435e-38f;       // also 0 and negatives, fixed up below
  const float xs = denormal ? x * 8388608.0f : x;  // 2^23
  const int32_t bits = as_int(xs);
  float e = float((bits >> 23) & 0xff) - 126.0f - (denormal ? 23.0f : 0.0f);
  float m = as_float((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool low = m < kSqrtHalf;
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  float out = log_reduced(m, e);
  out = x == 0.0f ? -__builtin_inff() : out;
  out = x < 0.0f ? __builtin_nanf("") : out;
  out = x == __builtin_inff() ? x : out;
  return x != x ? x : out;
}

// log(1 + x) for x in [0, 1] only (the log-space mixtures of divergences.h: log1p(exp(gap)), gap <= 0): u = 1 + x
// lies in [1, 2], so the reduction is one compare (no exponent extraction, no special values), and the rounding
// c of u is added back as c / u ~ c (1.5 - 0.5 u) (no division: c is below ulp(1)/2 and the approximation of
// 1/u is within 6% on [1, 2]).
FDIV_VEC_INLINE float log1p_unit(float x) {
  constexpr float kSqrt2 = 1.41421356237309505f;
  const float u = 1.0f + x;
  const float c = x - (u - 1.0f);  // exact
  const bool high = u >= kSqrt2;
  const float m = high ? 0.5f * u - 1.0f : u - 1.0f;  // exact
  return log_reduced(m, high ? 1.0f : 0.0f) + c * (1.5f - 0.5f * u);
}

// exp(x) for x <= 0 (or -inf): through exp2_bounded (x log2 e rounds to a relative eps of x; the callers' x is
// a log-space gap whose exp is added to 1).
FDIV_VEC_INLINE float exp_neg(float x) { return exp2_bounded(x * 1.44269504088896341f); }

// log(1 + x): log(u) corrected by the rounding of u = 1 + x (exact enough for x >= -1).
FDIV_VEC_INLINE float log1p(float x) {
  const float u = 1.0f + x;
  const float d = u - 1.0f;
  const float corrected = log(u) - (d - x) / u;
  float out = d == 0.0f ? x : (u == __builtin_inff() ? log(x) : corrected);
  return u == 0.0f ? -__builtin_inff() : out;
}

}  // namespace vec

// Vectorisable float math on the CPU; double stays on libm (float64 is for tests, not speed).
struct VecMath {
  static FDIV_VEC_INLINE float exp(float x) { return vec::exp(x); }
  static FDIV_VEC_INLINE float exp_neg(float x) { return vec::exp_neg(x); }
  static FDIV_VEC_INLINE float log1p_unit(float x) { return vec::log1p_unit(x); }
  static FDIV_VEC_INLINE double exp_neg(double x) { return fexp(x); }
  static FDIV_VEC_INLINE double log1p_unit(double x) { return flog1p(x); }
  static FDIV_VEC_INLINE float expm1(float x) { return vec::expm1(x); }
  static FDIV_VEC_INLINE float log(float x) { return vec::log(x); }
  static FDIV_VEC_INLINE float log1p(float x) { return vec::log1p(x); }
  static FDIV_VEC_INLINE double exp(double x) { return fexp(x); }
  static FDIV_VEC_INLINE double expm1(double x) { return fexpm1(x); }
  static FDIV_VEC_INLINE double log(double x) { return flog(x); }
  static FDIV_VEC_INLINE double log1p(double x) { return flog1p(x); }
};
#endif

}  // namespace fdiv_ops
