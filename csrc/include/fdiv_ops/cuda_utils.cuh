// Device-side helpers shared by the CUDA kernels: 16-bit conversions, the accumulation pair, the one
// 16-byte-vector loop with head and tail, per-device caches, the cluster-capability test of a loaded kernel
// image, and the launch-error convention (launchers return cudaError_t as int and never synchronise).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cuda/std/limits>
#include <cstdint>
#include <mutex>

#include "dtype.h"
#include "row_math.h"

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

// Infinity and NaN as compile-time constants. T(1) / T(0) (platform.h's pos_inf) is a run-time division on
// the device, and in double precision a call into the reciprocal's slow path, whose calling convention made
// ptxas cap the kernel at 64 registers and spill.
template <typename A>
__host__ __device__ constexpr A inf() {
  return ::cuda::std::numeric_limits<A>::infinity();
}
template <typename A>
__host__ __device__ constexpr A nan() {
  return ::cuda::std::numeric_limits<A>::quiet_NaN();
}
// row_math.h's OnlineLse::empty() without the division.
template <typename A>
__device__ __forceinline__ OnlineLse<A> empty_lse() {
  return {-inf<A>(), A(0)};
}

template <typename A>
struct Pair {
  A first, second;
  __host__ __device__ Pair operator+(const Pair& o) const { return {first + o.first, second + o.second}; }
};

// A vector of kBytes / sizeof(T) elements of T, for coalesced loads and stores of kBytes (16: 128-bit; 8 for
// loops whose element code is long, where fewer unrolled copies keep the kernel in the instruction cache).
template <typename T, int kBytes = 16>
struct alignas(kBytes) Vec {
  static constexpr int kN = kBytes / sizeof(T);
  T v[kN];
};
template <typename T>
using Vec16 = Vec<T, 16>;

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

// (kBytes = 8 for 8-byte vectors throughout, with Vec<T, 8>.)
// Elements of T before the first kBytes boundary at or after p (p is sizeof(T)-aligned), at most n.
template <typename T, int kBytes = 16, typename I>
__host__ __device__ __forceinline__ I vec_head(const void* p, I n) {
  const I mis = static_cast<I>(reinterpret_cast<uintptr_t>(p) % kBytes);
  const I head = mis == 0 ? 0 : (kBytes - mis) / static_cast<I>(sizeof(T));
  return head < n ? head : n;
}

// Whether two streams of T have the same position relative to kBytes boundaries (one loop serves both).
template <typename T, int kBytes = 16>
__host__ __device__ __forceinline__ bool same_head(const void* a, const void* b) {
  return reinterpret_cast<uintptr_t>(a) % kBytes == reinterpret_cast<uintptr_t>(b) % kBytes;
}

// Block-strided (tid, tid + nthreads, ...) over [0, n) with `head` from vec_head of the row's pointer. I is
// the index type: int where a row is known to hold < 2^31 elements (cheaper address arithmetic), else int64_t.
template <int N, typename I, typename Scalar, typename Vector>
__device__ __forceinline__ void vec_loop(I n, I head, bool vec, int tid, int nthreads, Scalar scalar, Vector vector) {
  // Not unrolled further (the vector body already holds N elements): one copy of each body in the kernel.
  // Without vectors the whole row is "head". Not unrolled further (the vector body already holds N
  // elements): one copy of each body in the kernel.
  const I h = vec ? head : n;
  const I m = (n - h) / N, tail = h + m * N;
#pragma unroll 1
  for (I v = tid; v < m; v += nthreads) vector(h + v * N);
  const I extra = h + (n - tail);  // < 2N with vectors
#pragma unroll 1
  for (I i = tid; i < extra; i += nthreads) scalar(i < h ? i : tail + (i - h));
}

// The aligned vector load and store of elements j0 .. j0+N-1 (j0 from vec_loop's vector call).
template <int kBytes = 16, typename T, typename I>
__device__ __forceinline__ Vec<T, kBytes> load_vec(const T* p, I j0) {
  return *reinterpret_cast<const Vec<T, kBytes>*>(p + j0);
}
template <typename T, int kBytes, typename I>
__device__ __forceinline__ void store_vec(T* p, I j0, const Vec<T, kBytes>& v) {
  *reinterpret_cast<Vec<T, kBytes>*>(p + j0) = v;
}

// ---------------------------------------------------------------------------------------------------
// Block reductions by warp shuffles (no cub: smaller code, faster compiles). Every thread receives the
// result, and every warp reduces the per-warp partials in the same order, so the result is bit-identical
// across threads and deterministic. `scratch` is shared memory of the size stated; it may be reused as soon
// as the call returns (both functions end with a barrier).

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Warp max that propagates NaN (row_math.h's nan_max): a NaN anywhere gives NaN in every lane.
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sums of K values per thread over a block of kThreads threads. scratch: K * kThreads / 32 values.
template <int kThreads, int K, typename A>
__device__ __forceinline__ void block_sum(A (&v)[K], A* scratch) {
  constexpr int W = kThreads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k * W + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < W ? scratch[k * W + lane] : A(0));
  __syncthreads();
}

// The block's online log-sum-exp from each thread's (m, s): a NaN-propagating max first (no exp), then one
// exp per thread to bring s to that max, then a sum; twice (warps, then the warps' partials). No exp in the
// reduction tree. Same rules as OnlineLse::merge: all -inf gives (-inf, 0), NaN or +inf/+inf gives NaN.
// scratch: 2 * kThreads / 32 values.
template <int kThreads, typename A>
__device__ __forceinline__ OnlineLse<A> block_lse(const OnlineLse<A>& st, A* scratch) {
  constexpr int W = kThreads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  A m = warp_max(st.m);
  A s = warp_sum(is_neg_inf(m) ? A(0) : st.s * fexp(st.m - m));
  if (lane == 0) {
    scratch[warp] = m;
    scratch[W + warp] = s;
  }
  __syncthreads();
  const A mw = lane < W ? scratch[lane] : -inf<A>();
  const A sw = lane < W ? scratch[W + lane] : A(0);
  m = warp_max(mw);
  s = warp_sum(is_neg_inf(m) ? A(0) : sw * fexp(mw - m));
  __syncthreads();
  return {m, s};
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
