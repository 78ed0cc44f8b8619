// Element types of the kernels: an enum (the bindings derive it from each tensor's DLPack dtype) and the
// accumulation type of each (fp32 for fp32/bf16/fp16, fp64 for fp64).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fdiv_ops {

enum class DType : int { float32 = 0, float64 = 1, bfloat16 = 2, float16 = 3 };

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

// FDIV_DISPATCH_FLOATING(dtype, BF16_TYPE, F16_TYPE, [&] { body using scalar_t; })
// The 16-bit storage types differ per backend (CPU structs, CUDA __nv_bfloat16/__half), so the caller
// names them.
#define FDIV_DISPATCH_FLOATING(DTYPE, BF16_TYPE, F16_TYPE, ...) \
  [&] {                                                         \
    switch (DTYPE) {                                            \
      case ::fdiv_ops::DType::float32: {                        \
        using scalar_t = float;                                 \
        return __VA_ARGS__();                                   \
      }                                                         \
      case ::fdiv_ops::DType::float64: {                        \
        using scalar_t = double;                                \
        return __VA_ARGS__();                                   \
      }                                                         \
      case ::fdiv_ops::DType::bfloat16: {                       \
        using scalar_t = BF16_TYPE;                             \
        return __VA_ARGS__();                                   \
      }                                                         \
      case ::fdiv_ops::DType::float16: {                        \
        using scalar_t = F16_TYPE;                              \
        return __VA_ARGS__();                                   \
      }                                                         \
    }                                                           \
    throw std::invalid_argument("fdiv_ops: unsupported dtype"); \
  }()

}  // namespace fdiv_ops
