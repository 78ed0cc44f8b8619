// Device-side helpers shared by the CUDA kernels: 16-bit conversions, the accumulation pair, and the
// launch-error convention (launchers return cudaError_t as int and never synchronise).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "dtype.h"

namespace fdiv_ops::cuda {

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(float x);
template <typename T>
__device__ __forceinline__ T from_acc(double x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}

template <typename A>
struct Pair {
  A first, second;
  __host__ __device__ Pair operator+(const Pair& o) const { return {first + o.first, second + o.second}; }
};

// 16-byte vector of T, for coalesced 128-bit loads and stores.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace fdiv_ops::cuda
