// CUDA kernels of f_distill_loss; the formula is in include/fdiv_ops/f_distill.h.
//
// Three paths, all deterministic (fixed reduction orders, no float atomics). Bytes that must move: 3 reads
// and 1 write of B*D elements; the first two paths move exactly that.
//  * on-chip (D <= 8192): one block per sample holds (fake - teacher) in registers between its reduction
//    and the gradient write, so x, teacher_x0 and fake_x0 are read from HBM once;
//  * cluster (sm_90, D up to ~400k fp32 accumulators): a thread-block cluster of 8 blocks per sample keeps
//    the sample's (fake - teacher) in shared memory, exchanges the block sums over distributed shared
//    memory, and writes the gradient from shared memory: again one read of each input;
//  * chunked (otherwise): pass 1 reduces |x - teacher| and (fake - teacher)^2 per (chunk, sample) with
//    16-byte loads; pass 2 re-reads teacher and fake (partly from L2) and writes the gradient.
// All end in a single-block finalize that turns the per-sample sums into n_b, w_b and the loss.
#include <cooperative_groups.h>

#include <cub/block/block_reduce.cuh>

#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/f_distill.h"

namespace fdiv_ops {
namespace {

using cuda::from_acc;
using cuda::Pair;
using cuda::to_acc;
using cuda::Vec16;

constexpr int kThreads = 256;
constexpr int kOnChipItems = 32;  // elements per thread kept in registers on the on-chip path
constexpr int64_t kOnChipMaxDim = int64_t(kThreads) * kOnChipItems;
constexpr int kMaxGridY = 65535;

template <typename A>
__device__ __forceinline__ A h_denominator(const A* stats) {
  return stats ? stats[0] / stats[1] + A(1e-6) : A(1);
}

// Per-sample sums (the (chunk, sample) partials reduced in chunk order) -> n_b, h_b, w_b and the loss.
template <typename A>
__global__ __launch_bounds__(kThreads) void finalize_kernel(const A* partial, int64_t batch, int64_t nchunks,
                                                            int64_t dim, const A* h, const A* stats, A eps, A scale,
                                                            A* grad_scale, A* norm_out, A* weight_out, A* loss) {
  using Reduce = cub::BlockReduce<A, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const A h_den = h_denominator(stats);
  A local = 0;
  for (int64_t b = threadIdx.x; b < batch; b += kThreads) {
    A abs_sum = 0, sq_sum = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      abs_sum += partial[2 * (b * nchunks + c)];
      sq_sum += partial[2 * (b * nchunks + c) + 1];
    }
    const A n_b = abs_sum / A(dim);
    const A h_b = h ? h[b] / h_den : A(1);
    const A w_b = h_b / (n_b + eps);
    norm_out[b] = n_b;
    weight_out[b] = h_b;
    grad_scale[b] = scale * w_b;
    local += w_b * w_b * sq_sum;
  }
  const A total = Reduce(tmp).Sum(local);
  if (threadIdx.x == 0) loss[0] = A(0.5) * scale * total;
}

// On-chip path: one block per sample; the differences stay in registers until w_b is known.
template <typename T>
__global__ __launch_bounds__(kThreads) void on_chip_kernel(const T* x, const T* t, const T* f, int64_t dim,
                                                           const acc_t<T>* h, const acc_t<T>* stats, acc_t<T> eps,
                                                           acc_t<T> scale, T* g, acc_t<T>* partial) {
  using A = acc_t<T>;
  using Reduce = cub::BlockReduce<Pair<A>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ A w_shared;
  const int64_t off = int64_t(blockIdx.x) * dim;
  A diff[kOnChipItems];
  Pair<A> sums{A(0), A(0)};
#pragma unroll
  for (int k = 0; k < kOnChipItems; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * kThreads;
    diff[k] = A(0);
    if (i < dim) {
      const A tv = to_acc(t[off + i]);
      diff[k] = to_acc(f[off + i]) - tv;
      sums.first += fabs_(to_acc(x[off + i]) - tv);
      sums.second += diff[k] * diff[k];
    }
  }
  const Pair<A> total = Reduce(tmp).Sum(sums);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = total.first;
    partial[2 * blockIdx.x + 1] = total.second;
    const A h_b = h ? h[blockIdx.x] / h_denominator(stats) : A(1);
    w_shared = scale * h_b / (total.first / A(dim) + eps);  // same formula as finalize_kernel
  }
  __syncthreads();
  const A w = w_shared;
#pragma unroll
  for (int k = 0; k < kOnChipItems; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * kThreads;
    if (i < dim) g[off + i] = from_acc<T>(w * diff[k]);
  }
}

// Cluster path: blockIdx.x is the block's rank in its sample's cluster, blockIdx.y the sample. Each block
// owns `slice` consecutive elements (a multiple of 8, so 16-byte vectors never straddle two blocks).
constexpr int kClusterBlocks = 8;
constexpr int64_t kClusterMaxSmemBytes = 200 * 1024;

template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void cluster_kernel(const T* x, const T* t, const T* f, int64_t dim,
                                                           int64_t slice, const acc_t<T>* h, const acc_t<T>* stats,
                                                           acc_t<T> eps, acc_t<T> scale, T* g, acc_t<T>* partial) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  using A = acc_t<T>;
  using Reduce = cub::BlockReduce<Pair<A>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ Pair<A> block_sum;
  __shared__ A w_shared;
  extern __shared__ unsigned char smem_raw[];
  A* diff = reinterpret_cast<A*>(smem_raw);
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const int64_t b = blockIdx.y, begin = int64_t(rank) * slice;
  const int64_t len = begin < dim ? min(slice, dim - begin) : 0;
  const int64_t off = b * dim + begin;
  Pair<A> s{A(0), A(0)};
  if constexpr (kVec) {
    constexpr int N = Vec16<T>::kN;
    const auto* xv = reinterpret_cast<const Vec16<T>*>(x + off);
    const auto* tv = reinterpret_cast<const Vec16<T>*>(t + off);
    const auto* fv = reinterpret_cast<const Vec16<T>*>(f + off);
    for (int64_t v = threadIdx.x; v < len / N; v += kThreads) {
      const Vec16<T> xa = xv[v], ta = tv[v], fa = fv[v];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A tj = to_acc(ta.v[j]), d = to_acc(fa.v[j]) - tj;
        diff[v * N + j] = d;
        s.first += fabs_(to_acc(xa.v[j]) - tj);
        s.second += d * d;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) {
      const A tj = to_acc(t[off + i]), d = to_acc(f[off + i]) - tj;
      diff[i] = d;
      s.first += fabs_(to_acc(x[off + i]) - tj);
      s.second += d * d;
    }
  }
  const Pair<A> total = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) block_sum = total;
  cluster.sync();  // every block's sum is visible cluster-wide
  if (threadIdx.x == 0) {
    Pair<A> all{A(0), A(0)};
    for (unsigned r = 0; r < cluster.num_blocks(); ++r) all = all + *cluster.map_shared_rank(&block_sum, r);
    if (rank == 0) {
      partial[2 * b] = all.first;
      partial[2 * b + 1] = all.second;
    }
    const A h_b = h ? h[b] / h_denominator(stats) : A(1);
    w_shared = scale * h_b / (all.first / A(dim) + eps);  // same formula as finalize_kernel
  }
  cluster.sync();  // no block leaves (freeing its shared memory) before the others have read block_sum
  const A w = w_shared;
  if constexpr (kVec) {
    constexpr int N = Vec16<T>::kN;
    auto* gv = reinterpret_cast<Vec16<T>*>(g + off);
    for (int64_t v = threadIdx.x; v < len / N; v += kThreads) {
      Vec16<T> out;
#pragma unroll
      for (int j = 0; j < N; ++j) out.v[j] = from_acc<T>(w * diff[v * N + j]);
      gv[v] = out;
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) g[off + i] = from_acc<T>(w * diff[i]);
  }
#else
  __trap();  // launched only on sm_90+ (checked on the host)
#endif
}

// Launches the cluster path if this device and shape allow it; false means "use the chunked path".
template <typename T, bool kVec>
bool try_launch_cluster(const FDistillArgs& a, int64_t slice, size_t smem, cudaStream_t s) {
  using A = acc_t<T>;
  auto kernel = cluster_kernel<T, kVec>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kClusterBlocks, static_cast<unsigned>(a.batch));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = kClusterBlocks;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess || clusters < 1) {
    cudaGetLastError();
    return false;
  }
  const T* x = static_cast<const T*>(a.x);
  const T* t = static_cast<const T*>(a.teacher_x0);
  const T* f = static_cast<const T*>(a.fake_x0);
  if (cudaLaunchKernelEx(&config, kernel, x, t, f, a.dim, slice, static_cast<const A*>(a.h),
                         static_cast<const A*>(a.h_stats), A(a.eps), A(a.scale), static_cast<T*>(a.grad),
                         static_cast<A*>(a.workspace)) != cudaSuccess) {
    cudaGetLastError();  // a refused cluster launch is not sticky: fall back to the chunked path
    return false;
  }
  return true;
}

// Whether the current device is sm_90 or newer (thread-block clusters); cached per device ordinal.
bool device_has_clusters() {
  static int cached[64] = {};  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cached[dev] == 0) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cached[dev] = major >= 9 ? 2 : 1;
  }
  return cached[dev] == 2;
}

// Chunked pass 1: partial sums of one chunk of one sample. kVec: every row and chunk is 16-byte aligned.
template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void partials_kernel(const T* x, const T* t, const T* f, int64_t batch,
                                                            int64_t dim, acc_t<T>* partial) {
  using A = acc_t<T>;
  using Reduce = cub::BlockReduce<Pair<A>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t begin = int64_t(blockIdx.x) * kFDistillChunkCuda;
  const int64_t len = min(kFDistillChunkCuda, dim - begin);
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t off = b * dim + begin;
    Pair<A> s{A(0), A(0)};
    if constexpr (kVec) {
      constexpr int N = Vec16<T>::kN;
      const auto* xv = reinterpret_cast<const Vec16<T>*>(x + off);
      const auto* tv = reinterpret_cast<const Vec16<T>*>(t + off);
      const auto* fv = reinterpret_cast<const Vec16<T>*>(f + off);
      for (int64_t v = threadIdx.x; v < len / N; v += kThreads) {
        const Vec16<T> xa = xv[v], ta = tv[v], fa = fv[v];
#pragma unroll
        for (int j = 0; j < N; ++j) {
          const A tj = to_acc(ta.v[j]), d = to_acc(fa.v[j]) - tj;
          s.first += fabs_(to_acc(xa.v[j]) - tj);
          s.second += d * d;
        }
      }
    } else {
      for (int64_t i = threadIdx.x; i < len; i += kThreads) {
        const A tj = to_acc(t[off + i]), d = to_acc(f[off + i]) - tj;
        s.first += fabs_(to_acc(x[off + i]) - tj);
        s.second += d * d;
      }
    }
    const Pair<A> total = Reduce(tmp).Sum(s);
    if (threadIdx.x == 0) {
      const int64_t job = b * gridDim.x + blockIdx.x;
      partial[2 * job] = total.first;
      partial[2 * job + 1] = total.second;
    }
    __syncthreads();  // tmp is reused by the next sample
  }
}

// Chunked pass 2: grad = grad_scale[b] * (fake - teacher).
template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void grad_kernel(const T* t, const T* f, int64_t batch, int64_t dim,
                                                        const acc_t<T>* grad_scale, T* g) {
  using A = acc_t<T>;
  const int64_t begin = int64_t(blockIdx.x) * kFDistillChunkCuda;
  const int64_t len = min(kFDistillChunkCuda, dim - begin);
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t off = b * dim + begin;
    const A w = grad_scale[b];
    if constexpr (kVec) {
      constexpr int N = Vec16<T>::kN;
      const auto* tv = reinterpret_cast<const Vec16<T>*>(t + off);
      const auto* fv = reinterpret_cast<const Vec16<T>*>(f + off);
      auto* gv = reinterpret_cast<Vec16<T>*>(g + off);
      for (int64_t v = threadIdx.x; v < len / N; v += kThreads) {
        const Vec16<T> ta = tv[v], fa = fv[v];
        Vec16<T> out;
#pragma unroll
        for (int j = 0; j < N; ++j) out.v[j] = from_acc<T>(w * (to_acc(fa.v[j]) - to_acc(ta.v[j])));
        gv[v] = out;
      }
    } else {
      for (int64_t i = threadIdx.x; i < len; i += kThreads)
        g[off + i] = from_acc<T>(w * (to_acc(f[off + i]) - to_acc(t[off + i])));
    }
  }
}

template <typename L, typename A>
__global__ __launch_bounds__(kThreads) void weights_kernel(FDistillWeightsArgs a) {
  using Reduce = cub::BlockReduce<A, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const L* logits = static_cast<const L*>(a.logits);
  const A* divisor = static_cast<const A*>(a.ratio_divisor);
  const A param = A(a.divergence.param);
  A local = 0;
  for (int64_t b = threadIdx.x; b < a.batch; b += kThreads) {
    A mean = 0;
    for (int64_t k = 0; k < a.heads; ++k) mean += to_acc(logits[b * a.heads + k]);
    mean /= A(a.heads);
    const A l = clamp_(mean, A(-a.logit_clamp), A(a.logit_clamp));
    A r = clamp_(fexp(l), A(a.ratio_lo), A(a.ratio_hi));
    if (divisor) r /= divisor[b];
    const A hb = div_h(a.divergence.kind, flog(r), param);
    static_cast<A*>(a.ratio_out)[b] = r;
    static_cast<A*>(a.h_out)[b] = hb;
    local += hb;
  }
  const A sum = Reduce(tmp).Sum(local);
  if (threadIdx.x == 0) {
    static_cast<A*>(a.h_stats_out)[0] = sum;
    static_cast<A*>(a.h_stats_out)[1] = A(a.batch);
  }
}

template <typename T>
int launch_f_distill(const FDistillArgs& a, cudaStream_t s) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* t = static_cast<const T*>(a.teacher_x0);
  const T* f = static_cast<const T*>(a.fake_x0);
  T* g = static_cast<T*>(a.grad);
  const A* h = static_cast<const A*>(a.h);
  const A* stats = static_cast<const A*>(a.h_stats);
  const int64_t B = a.batch, D = a.dim, nchunks = f_distill_num_chunks(D, true);
  A* partial = static_cast<A*>(a.workspace);
  A* grad_scale = partial + 2 * B * nchunks;

  const auto addr = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(t) | reinterpret_cast<uintptr_t>(f) |
                    reinterpret_cast<uintptr_t>(g);
  const bool vec = addr % 16 == 0 && (D * int64_t(sizeof(T))) % 16 == 0;
  const int64_t slice = ((D + kClusterBlocks - 1) / kClusterBlocks + 7) / 8 * 8;
  const size_t smem = static_cast<size_t>(slice) * sizeof(A);
  bool done = false;
  if (D <= kOnChipMaxDim) {
    on_chip_kernel<T>
        <<<static_cast<unsigned>(B), kThreads, 0, s>>>(x, t, f, D, h, stats, A(a.eps), A(a.scale), g, partial);
    done = true;
  } else if (int64_t(smem) <= kClusterMaxSmemBytes && B <= kMaxGridY && device_has_clusters()) {
    done = vec ? try_launch_cluster<T, true>(a, slice, smem, s) : try_launch_cluster<T, false>(a, slice, smem, s);
  }
  if (!done) {
    const dim3 grid(static_cast<unsigned>(nchunks), static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY));
    if (vec)
      partials_kernel<T, true><<<grid, kThreads, 0, s>>>(x, t, f, B, D, partial);
    else
      partials_kernel<T, false><<<grid, kThreads, 0, s>>>(x, t, f, B, D, partial);
    finalize_kernel<A><<<1, kThreads, 0, s>>>(partial, B, nchunks, D, h, stats, A(a.eps), A(a.scale), grad_scale,
                                              static_cast<A*>(a.normalizer_out), static_cast<A*>(a.weight_out),
                                              static_cast<A*>(a.loss));
    if (vec)
      grad_kernel<T, true><<<grid, kThreads, 0, s>>>(t, f, B, D, grad_scale, g);
    else
      grad_kernel<T, false><<<grid, kThreads, 0, s>>>(t, f, B, D, grad_scale, g);
    return cuda::launch_status();
  }
  // on-chip and cluster paths wrote the gradient and one (A, S) pair per sample: finalize the statistics
  finalize_kernel<A><<<1, kThreads, 0, s>>>(partial, B, /*nchunks=*/1, D, h, stats, A(a.eps), A(a.scale), grad_scale,
                                            static_cast<A*>(a.normalizer_out), static_cast<A*>(a.weight_out),
                                            static_cast<A*>(a.loss));
  return cuda::launch_status();
}

}  // namespace

int f_distill_cuda(const FDistillArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] { return launch_f_distill<scalar_t>(args, s); });
}

int f_distill_weights_cuda(const FDistillWeightsArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return FDIV_DISPATCH_FLOATING(args.logits_dtype, __nv_bfloat16, __half, [&] {
    if (args.acc_dtype == DType::float64)
      weights_kernel<scalar_t, double><<<1, kThreads, 0, s>>>(args);
    else
      weights_kernel<scalar_t, float><<<1, kThreads, 0, s>>>(args);
    return cuda::launch_status();
  });
}

}  // namespace fdiv_ops
