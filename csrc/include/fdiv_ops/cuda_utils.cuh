// Device-side helpers shared by the CUDA kernels: 16-bit conversions, the accumulation pair, the one
// 16-byte-vector loop with head and tail, per-device caches, the cluster-capability test of a loaded kernel
// image, and the launch-error convention (launchers return cudaError_t as int and never synchronise).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <mutex>

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

// ---------------------------------------------------------------------------------------------------
// The 16-byte-vector loop with head and tail, written once. A row of n elements at `p` splits into
//   [0, head)                   elements before the first 16-byte boundary of p    (scalar)
//   [head, head + m N)          m vectors of N = Vec16<T>::kN elements, 16-byte aligned (vector)
//   [head + m N, n)             the rest                                            (scalar)
// so any row is vectorised whatever its length and offset (odd V, a row r * V of a misaligned tensor).
// Several streams (student, teacher, gradient) share one loop when they have the same misalignment
// (same_head); otherwise pass vec = false and everything runs scalar. The loop only hands out indices:
//   scalar(j)    handles element j
//   vector(j0)   handles elements j0 .. j0+N-1, where (p + j0) is 16-byte aligned for every stream
// The head and the tail share one scalar call site (one copy of the element code, not two).

// Elements of T before the first 16-byte boundary at or after p (p is sizeof(T)-aligned), at most n.
template <typename T>
__host__ __device__ __forceinline__ int64_t vec_head(const void* p, int64_t n) {
  const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) % 16);
  const int64_t head = mis == 0 ? 0 : (16 - mis) / static_cast<int64_t>(sizeof(T));
  return head < n ? head : n;
}

// Whether two streams of T have the same position relative to 16-byte boundaries (one loop serves both).
template <typename T>
__host__ __device__ __forceinline__ bool same_head(const void* a, const void* b) {
  return reinterpret_cast<uintptr_t>(a) % 16 == reinterpret_cast<uintptr_t>(b) % 16;
}

// Block-strided (tid, tid + nthreads, ...) over [0, n) with `head` from vec_head of the row's pointer.
template <int N, typename Scalar, typename Vector>
__device__ __forceinline__ void vec_loop(int64_t n, int64_t head, bool vec, int tid, int nthreads, Scalar scalar,
                                         Vector vector) {
  if (!vec) {
    for (int64_t j = tid; j < n; j += nthreads) scalar(j);
    return;
  }
  const int64_t m = (n - head) / N, tail = head + m * N;
  for (int64_t v = tid; v < m; v += nthreads) vector(head + v * N);
  const int64_t extra = head + (n - tail);  // < 2N
  for (int64_t i = tid; i < extra; i += nthreads) scalar(i < head ? i : tail + (i - head));
}

// The aligned 16-byte load and store of elements j0 .. j0+N-1 (j0 from vec_loop's vector call).
template <typename T>
__device__ __forceinline__ Vec16<T> load_vec(const T* p, int64_t j0) {
  return *reinterpret_cast<const Vec16<T>*>(p + j0);
}
template <typename T>
__device__ __forceinline__ void store_vec(T* p, int64_t j0, const Vec16<T>& v) {
  *reinterpret_cast<Vec16<T>*>(p + j0) = v;
}

// ---------------------------------------------------------------------------------------------------
// Host side.

inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

// A value computed once per device ordinal (an attribute or occupancy query, a capability decision) and
// read without locking afterwards; compute(device) runs at most once per device, thread-safely.
template <typename V, int kMaxDevices = 64>
class PerDevice {
 public:
  template <typename Compute>
  const V& get(int device, Compute compute) {
    if (device < 0 || device >= kMaxDevices) {
      static thread_local V scratch;  // more devices than slots: recompute (never happens in practice)
      scratch = compute(device);
      return scratch;
    }
    std::call_once(once_[device], [&] { value_[device] = compute(device); });
    return value_[device];
  }

 private:
  std::array<std::once_flag, kMaxDevices> once_;
  std::array<V, kMaxDevices> value_{};
};

inline int current_device() {
  int device = 0;
  return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}

// Whether the image of `kernel` LOADED on `device` was compiled from compute_90 or newer code, on a device
// that launches thread-block clusters: only then does a body guarded by __CUDA_ARCH__ >= 900 exist in it.
// A build without compute_90 code (e.g. FDIV_OPS_CUDA_ARCHS=80) JIT-compiles compute_80 PTX on an H100,
// whose cluster body is the __trap() of the pre-sm_90 branch: ptxVersion (the virtual architecture the
// image was compiled from) is then 80. Never decide this from the device's compute capability alone.
// Cache the answer per device (PerDevice) and per kernel: every call queries the driver.
inline bool image_supports_clusters(const void* kernel, int device) {
  int cluster_launch = 0;
  if (cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  cudaFuncAttributes attr{};
  if (!cluster_launch || cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.ptxVersion >= 90 && attr.binaryVersion >= 90;
}

}  // namespace fdiv_ops::cuda
