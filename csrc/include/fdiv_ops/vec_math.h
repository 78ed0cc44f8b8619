// Branch-free elementwise math for the CPU kernels' `#pragma omp simd` loops.
//
// libm's expf is a call GCC does not vectorise, so a row loop calling it runs one lane at a time. vexp<float>
// is the classic Cody-Waite reduction plus a degree-6 minimax polynomial (the Cephes expf coefficients):
//   n = round(x log2 e),  r = x - n ln2 (ln2 split in a hi and a lo part),  e^x = 2^n (1 + r + r^2 P(r))
// with 2^n built in the exponent bits. Every step is a multiply-add, a compare/select or an integer shift,
// so GCC turns the loop into AVX2/AVX-512 code. Error: <= 2 ulp on [-87.3, 88.7] (checked against float64
// by the sequence_logprobs tests, which run every kernel result against a float64 reference).
// Edge values: x < -87.33 gives 0 (so exp(-inf) = 0 and denormal results flush to 0: they are below 1e-38
// of a row's largest term, where they are used); x > 88.72 gives +inf; NaN gives NaN.
// vexp<double> calls libm: float64 is the testing dtype, where precision matters and speed does not.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fdiv_ops::vec {

template <typename T> inline T vexp(T x);

template <> __attribute__((always_inline)) inline float vexp<float>(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const float xc = x < -87.33f ? -87.33f : (x > 88.72f ? 88.72f : x);
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float poly = p * r * r + r + 1.0f;
  // 2^n: n in [-126, 128]; split as 2^(n/2) 2^(n - n/2) so that n = 128 (x near 88.72) stays finite.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  const int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  float y = poly * s1 * s2;
  y = x < -87.33f ? 0.0f : y;
  y = x > 88.72f ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

template <> inline double vexp<double>(double x) { return std::exp(x); }

}  // namespace fdiv_ops::vec
