// Host/device portability: one spelling of the math for the CPU loops and the CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FDIV_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced, as on the device: the CPU hot loops only vectorise when every call in them is inlined, and
// GCC's heuristics give up on the larger translation units (13 divergences x 4 dtypes x 3 ISA clones).
#define FDIV_HD inline __attribute__((always_inline))
#else
#define FDIV_HD inline
#endif

namespace fdiv_ops {

// float and double overloads that resolve to the same libm/CUDA intrinsics on host and device.
FDIV_HD float fexp(float x) { return expf(x); }
FDIV_HD double fexp(double x) { return exp(x); }
FDIV_HD float flog(float x) { return logf(x); }
FDIV_HD double flog(double x) { return log(x); }
FDIV_HD float flog1p(float x) { return log1pf(x); }
FDIV_HD double flog1p(double x) { return log1p(x); }
FDIV_HD float fsqrt(float x) { return sqrtf(x); }
FDIV_HD double fsqrt(double x) { return sqrt(x); }
FDIV_HD float fexpm1(float x) { return expm1f(x); }
FDIV_HD double fexpm1(double x) { return expm1(x); }
FDIV_HD float fsinh(float x) { return sinhf(x); }
FDIV_HD double fsinh(double x) { return sinh(x); }
FDIV_HD float fabs_(float x) { return fabsf(x); }
FDIV_HD double fabs_(double x) { return fabs(x); }

template <typename T>
FDIV_HD T fmin_(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
FDIV_HD T fmax_(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
FDIV_HD T clamp_(T x, T lo, T hi) {
  return fmin_(fmax_(x, lo), hi);
}
template <typename T>
FDIV_HD bool is_pos_inf(T x) {
  return x > T(0) && x * T(0.5) == x;
}
template <typename T>
FDIV_HD bool is_neg_inf(T x) {
  return x < T(0) && x * T(0.5) == x;
}
template <typename T>
FDIV_HD T pos_inf() {
  return T(1) / T(0);
}
// r * y with the convention 0 * anything = 0 (the x log x -> 0 limit), never NaN from 0 * inf.
template <typename T>
FDIV_HD T mul0(T r, T y) {
  return (r == T(0) || y == T(0)) ? T(0) : r * y;
}

// softplus(x) = log(1 + e^x), exact for both tails and for +-inf.
template <typename T>
FDIV_HD T softplus(T x) {
  return x > T(0) ? x + flog1p(fexp(-x)) : flog1p(fexp(x));
}
// log(e^a + e^b) without overflow; -inf on both sides gives -inf, not NaN.
template <typename T>
FDIV_HD T log_add_exp(T a, T b) {
  T hi = fmax_(a, b), lo = fmin_(a, b);
  if (is_neg_inf(hi)) return hi;
  return hi + flog1p(fexp(lo - hi));
}
// sigmoid(x) = 1/(1+e^-x) without overflow.
template <typename T>
FDIV_HD T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + fexp(-x));
  T e = fexp(x);
  return e / (T(1) + e);
}

}  // namespace fdiv_ops
