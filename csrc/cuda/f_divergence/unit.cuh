// The host side of one (dtype, divergence) pair: which dense kernel runs (cluster or streaming), its
// launch, and the definitions of launch_*_unit that a unit file <dtype>_<unit>.cu instantiates.
//
// Dense path choice, per launch, without any host synchronisation:
//   cluster     float32/bf16/fp16, when the LOADED image of the cluster kernel was compiled from compute_90+
//               (cuda::image_supports_clusters; cached per device and kernel, with the kernel's shared-memory
//               limit) and the row fits: C in {1, 2, 4, 8} blocks of 512 threads, the smallest C whose two
//               slices take <= 100 KB of shared memory per block (2 blocks per SM), else the smallest that
//               fits the device's per-block limit. No occupancy query is needed: a portable cluster (C <= 8)
//               of blocks within the per-block limits always launches.
//   streaming   otherwise (sm_80, float64, or a row above ~8 x 227 KB).
// FDIV_OPS_TOKEN_KD_PATH=stream|cluster forces a path (tests compare both; "cluster" fails with
// cudaErrorNotSupported where it is unavailable). Read per launch (a getenv, no syscall).
#pragma once

#include <cstdlib>
#include <cstring>

// make_cat_series (divergences.h, host code) instantiates its fit for every divergence; for total_variation
// (no near polynomials) the fit loop follows a constant early return, which nvcc's front end reports as
// "loop is not reachable" (#128; the host compiler does not). The unit files include this header first, so
// the suppression covers divergences.h and nothing past the includes.
#pragma nv_diag_suppress 128
#include "kernels.cuh"
#include "units.h"
#pragma nv_diag_default 128

namespace fdiv_ops::token_kd {

template <typename T>
constexpr bool kClusterDtype = sizeof(T) < 8;

// The kernels index within a row in 32 bits, and one block per row (streaming) is one grid x index.
constexpr int64_t kMaxRow = 0x7fffffff, kMaxRows = 0x7fffffff;

enum class Path { automatic, stream, cluster };

inline Path requested_path() {
  const char* v = std::getenv("FDIV_OPS_TOKEN_KD_PATH");
  if (v == nullptr) return Path::automatic;
  if (std::strcmp(v, "stream") == 0) return Path::stream;
  if (std::strcmp(v, "cluster") == 0) return Path::cluster;
  return Path::automatic;
}

constexpr int64_t kClusterMaxBlocks = 8;            // portable cluster size
constexpr int64_t kClusterTargetSmem = 100 * 1024;  // two blocks per SM (228 KB per SM on sm_90)

struct ClusterPlan {
  int64_t blocks = 0, chunk = 0;  // blocks = 0: does not fit
  size_t smem = 0;
};

// The smallest cluster that holds a row pair of V = max(Vs, Vt) columns in <= kClusterTargetSmem per block,
// else the smallest within max_smem (the device's opt-in limit less the kernel's static shared memory).
template <typename T>
ClusterPlan plan_cluster(int64_t V, int64_t max_smem) {
  constexpr int64_t N = Vec16<T>::kN;
  for (int64_t limit : {kClusterTargetSmem, max_smem}) {
    for (int64_t c = 1; c <= kClusterMaxBlocks; c *= 2) {
      const int64_t chunk = ((V + c - 1) / c + N - 1) / N * N;
      const int64_t bytes = 2 * (chunk + cluster_pad<T>()) * int64_t(sizeof(T));
      if (bytes <= limit) return {c, chunk, static_cast<size_t>(bytes)};
    }
  }
  return {};
}

// Per device: -1 when the cluster kernel cannot run there, else the dynamic shared memory it may use.
template <typename T, typename Div>
int64_t cluster_smem_limit(int device) {
  static cuda::PerDevice<int64_t> cache;
  return cache.get(device, [](int dev) -> int64_t {
    const void* kernel = reinterpret_cast<const void*>(&dense_cluster_kernel<T, Div>);
    if (!cuda::image_supports_clusters(kernel, dev)) return -1;
    int optin = 0;
    cudaFuncAttributes attr{};
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
        cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    const int64_t limit = int64_t(optin) - int64_t(attr.sharedSizeBytes);
    if (limit <= 0 ||
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    return limit;
  });
}

// The categorical constants of a (canonical) spec, as the CPU's make_setup builds them (cpu/f_divergence/kernels.h):
// the near-r = 1 polynomials are fitted here, on the host. The fit costs 10-50 us (measured on this machine
// under load) against a few us of launch, and a training loop launches the same spec again and again: each
// host thread keeps the last few specs' constants (per dtype and unit), so the fit runs once per spec.
template <typename A>
CatConsts<A> make_cat_consts(DivergenceSpec spec) {
  struct Entry {
    DivergenceSpec spec;
    CatConsts<A> consts;
  };
  constexpr int kEntries = 4;
  thread_local Entry cache[kEntries];
  thread_local int filled = 0, next = 0;
  for (int i = 0; i < filled; ++i)
    if (cache[i].spec.kind == spec.kind && cache[i].spec.param == spec.param) return cache[i].consts;
  const CatConsts<A> c{make_cat_param(A(spec.param)), make_cat_series<A>(spec), div_c1<A>(spec)};
  cache[next] = {spec, c};
  next = (next + 1) % kEntries;
  filled = filled < kEntries ? filled + 1 : kEntries;
  return c;
}

template <typename T, typename Div>
int launch_dense(const FDivergenceArgs& a, DivergenceSpec spec, cudaStream_t s) {
  using A = acc_t<T>;
  if (a.rows == 0) return 0;
  if (a.student_vocab > kMaxRow || a.teacher_vocab > kMaxRow || a.rows > kMaxRows)
    return static_cast<int>(cudaErrorInvalidValue);
  DenseParams<A> p{a, make_cat_consts<A>(spec), 0};
  const Path path = requested_path();
  if constexpr (kClusterDtype<T>) {
    if (path != Path::stream) {
      const int device = cuda::current_device();
      const int64_t limit = device < 0 ? -1 : cluster_smem_limit<T, Div>(device);
      const ClusterPlan plan =
          limit < 0 ? ClusterPlan{} : plan_cluster<T>(std::max(a.student_vocab, a.teacher_vocab), limit);
      if (plan.blocks > 0 && a.rows <= (int64_t(1) << 31) / kClusterMaxBlocks - 1) {
        p.chunk = static_cast<int>(plan.chunk);
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(static_cast<unsigned>(a.rows * plan.blocks));
        config.blockDim = dim3(kThreads);
        config.dynamicSmemBytes = plan.smem;
        config.stream = s;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = static_cast<unsigned>(plan.blocks);
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        config.attrs = attr;
        config.numAttrs = 1;
        const cudaError_t err = cudaLaunchKernelEx(&config, dense_cluster_kernel<T, Div>, p);
        if (err == cudaSuccess || path == Path::cluster) return static_cast<int>(err);
        cudaGetLastError();  // a refused cluster launch is not sticky: stream instead
        p.chunk = 0;
      }
    }
  }
  if (path == Path::cluster) return static_cast<int>(cudaErrorNotSupported);
  dense_stream_kernel<T, Div><<<dim3(static_cast<unsigned>(a.rows)), kThreads, 0, s>>>(p);
  return cuda::launch_status();
}

template <typename T, typename Div>
int launch_topk(const FDivergenceTopkArgs& a, DivergenceSpec spec, cudaStream_t s) {
  if (a.rows == 0) return 0;
  if (a.vocab > kMaxRow || a.k > kMaxRow || a.rows > kMaxRows) return static_cast<int>(cudaErrorInvalidValue);
  const TopkParams<acc_t<T>> p{a, make_cat_param(acc_t<T>(spec.param))};
  topk_kernel<T, Div><<<dim3(static_cast<unsigned>(a.rows)), kThreads, 0, s>>>(p);
  return cuda::launch_status();
}

// The unit kUnit of dtype T: the divergences whose id % kUnits<T> == kUnit (the switch instantiates only
// those; the entry points in f_divergence.cu never route another divergence here).
template <typename T, int kUnit>
int launch_dense_unit(const FDivergenceArgs& a, DivergenceSpec spec, cudaStream_t s) {
  return FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) -> int {
    using Div = decltype(div);
    if constexpr (DivId<Div>::value % kUnits<T> == kUnit)
      return launch_dense<T, Div>(a, spec, s);
    else
      return static_cast<int>(cudaErrorInvalidValue);
  });
}

template <typename T, int kUnit>
int launch_topk_unit(const FDivergenceTopkArgs& a, DivergenceSpec spec, cudaStream_t s) {
  return FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) -> int {
    using Div = decltype(div);
    if constexpr (DivId<Div>::value % kUnits<T> == kUnit)
      return launch_topk<T, Div>(a, spec, s);
    else
      return static_cast<int>(cudaErrorInvalidValue);
  });
}

}  // namespace fdiv_ops::token_kd

// One unit file: FDIV_TOKEN_KD_UNIT(float, 0) instantiates unit 0 of float.
#define FDIV_TOKEN_KD_UNIT(T, U)                                                                                       \
  template int fdiv_ops::token_kd::launch_dense_unit<T, U>(const fdiv_ops::FDivergenceArgs&, fdiv_ops::DivergenceSpec, \
                                                           cudaStream_t);                                              \
  template int fdiv_ops::token_kd::launch_topk_unit<T, U>(const fdiv_ops::FDivergenceTopkArgs&,                        \
                                                          fdiv_ops::DivergenceSpec, cudaStream_t);
