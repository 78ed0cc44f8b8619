// 16-bit storage types for the CPU kernels: plain structs with float conversions, so the CPU core needs
// neither torch nor a compiler extension. bf16 converts by shifting (vectorisable); fp16 uses _Float16.
#pragma once

#include <cstdint>
#include <cstring>

namespace fdiv_ops::cpu {

// Forced inline: the kernels call these from target_clones functions, into which GCC refuses to inline
// an ordinary function compiled for another -march (and a call in a loop stops it vectorising).
#define FDIV_CPU_INLINE inline __attribute__((always_inline))

struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

FDIV_CPU_INLINE float to_float(float x) { return x; }
FDIV_CPU_INLINE double to_float(double x) { return x; }
FDIV_CPU_INLINE float to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
FDIV_CPU_INLINE float to_float(f16 x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, sizeof h);
  return static_cast<float>(h);
}

template <typename T>
FDIV_CPU_INLINE T from_float(float x);
template <typename T>
FDIV_CPU_INLINE T from_float(double x);
template <>
FDIV_CPU_INLINE float from_float<float>(float x) {
  return x;
}
template <>
FDIV_CPU_INLINE double from_float<double>(double x) {
  return x;
}
template <>
FDIV_CPU_INLINE bf16 from_float<bf16>(float x) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};  // a select
}
template <>
FDIV_CPU_INLINE f16 from_float<f16>(float x) {
  _Float16 h = static_cast<_Float16>(x);
  f16 out;
  std::memcpy(&out.bits, &h, sizeof h);
  return out;
}

}  // namespace fdiv_ops::cpu
