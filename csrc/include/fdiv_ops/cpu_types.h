// 16-bit storage types for the CPU kernels: plain structs with float conversions, so the CPU core needs
// neither torch nor a compiler extension. bf16 converts by shifting (vectorisable); fp16 uses _Float16.
#pragma once

#include <cstdint>
#include <cstring>

namespace fdiv_ops::cpu {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

inline float to_float(float x) { return x; }
inline double to_float(double x) { return x; }
inline float to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float to_float(f16 x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, sizeof h);
  return static_cast<float>(h);
}

template <typename T> inline T from_float(float x);
template <typename T> inline T from_float(double x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline double from_float<double>(double x) { return x; }
template <> inline bf16 from_float<bf16>(float x) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
template <> inline f16 from_float<f16>(float x) {
  _Float16 h = static_cast<_Float16>(x);
  f16 out;
  std::memcpy(&out.bits, &h, sizeof h);
  return out;
}

}  // namespace fdiv_ops::cpu
