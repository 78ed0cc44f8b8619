// CUDA kernels of f_distill_loss; the formula is in include/fdiv_ops/f_distill.h, the per-sample arithmetic
// (the same code as the CPU's, in double) in include/fdiv_ops/f_distill_math.h. No exp/log per element.
//
// Three paths, all deterministic (fixed reduction orders, no float atomics). Bytes that must move: 3 reads
// and 1 write of B*D elements; the first two paths move exactly that.
//  * on-chip (D <= 8192): one block per sample holds (fake - teacher) in registers between its reduction
//    and the gradient write, so x, teacher_x0 and fake_x0 are read from HBM once;
//  * cluster (sm_90 images, D up to ~900k): a thread-block cluster of 8 or 16 blocks of 512 threads per
//    sample keeps the sample's (fake - teacher) in shared memory, exchanges the block sums over distributed
//    shared memory, and writes the gradient from shared memory: again one read of each input. The cluster
//    size is the one that keeps the most blocks resident: at B = 64 x 16x128x128, 16-block clusters need
//    64 KiB of shared memory per block, so three blocks share an SM and one block's writes overlap the next
//    one's reads (8-block clusters need 128 KiB: one block per SM, whose read and write phases alternate).
//    Occupancy answers are cached per (device, cluster size, bytes), attributes set once per device. The
//    path is chosen from the LOADED image of the kernel (cuda::image_supports_clusters: a compute_80 PTX
//    JIT-compiled on an H100 holds the pre-sm_90 __trap() body), never from the device alone;
//  * chunked (otherwise): pass 1 reduces |x - teacher| and (fake - teacher)^2 per (chunk, sample) with
//    16-byte loads; pass 2 re-reads teacher and fake (partly from L2) and writes the gradient.
// All end in a single-block finalize that turns the per-sample sums into n_b, w_b, the sample losses and
// the loss (on-chip and cluster kernels derive the same w_b from the same sums with the same function).
// Sums run in double for 32-bit data (sum_t: no finite float overflows them, e.g. inputs near 1e23 whose
// squares pass float32's range) and in float for fp16 (whose squares cannot overflow a float).
// Vector loads: cuda::vec_loop (16-byte vectors with a scalar head and tail, any D and any offset).
#include <cooperative_groups.h>

#include <cub/block/block_reduce.cuh>
#include <mutex>

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

// The type the per-element sums run in: double unless the data is fp16 (whose squares fit a float).
template <typename T>
struct SumOf {
  using type = double;
};
template <>
struct SumOf<__half> {
  using type = float;
};
template <typename T>
using sum_t = typename SumOf<T>::type;

// What every path needs to finish a sample, passed by value to the kernels.
template <typename A>
struct SampleParams {
  const A* log_h;  // (B,) log h_b, or null (h = 1)
  const A* stats;  // (2,) scaled [sum h, n], or null (not normalised)
  double eps, scale;
  int64_t dim;
};

template <typename A>
__device__ __forceinline__ FDistillSample<A> finish_sample(const SampleParams<A>& p, int64_t b, double abs_sum,
                                                           double sq_sum) {
  return f_distill_sample<A>(abs_sum, sqrt(sq_sum), p.log_h, b, f_distill_log_denominator(p.stats), p.dim, p.eps,
                             p.scale);
}

// One element's contribution: |x - t| and (f - t)^2 in S (so neither overflows), (f - t) in A for the gradient.
template <typename S, typename A>
__device__ __forceinline__ A add_element(Pair<S>& s, A xv, A tv, A fv) {
  const S ds = S(fv) - S(tv);
  s.first += fabs_(S(xv) - S(tv));
  s.second += ds * ds;
  return fv - tv;
}

// Per-sample sums (the (chunk, sample) partials reduced in chunk order) -> n_b, h_b, w_b and the loss.
template <typename A>
__global__ __launch_bounds__(kThreads) void finalize_kernel(const double* partial, int64_t batch, int64_t nchunks,
                                                            SampleParams<A> p, double* grad_scale, A* norm_out,
                                                            A* weight_out, A* sample_loss, A* loss) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  double local = 0;
  for (int64_t b = threadIdx.x; b < batch; b += kThreads) {
    double abs_sum = 0, sq_sum = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      abs_sum += partial[2 * (b * nchunks + c)];
      sq_sum += partial[2 * (b * nchunks + c) + 1];
    }
    const FDistillSample<A> s = finish_sample(p, b, abs_sum, sq_sum);
    norm_out[b] = s.normalizer;
    weight_out[b] = s.weight;
    if (sample_loss) sample_loss[b] = s.sample_loss;
    grad_scale[b] = s.grad_scale;
    local += s.sample_loss;
  }
  const double total = Reduce(tmp).Sum(local);
  if (threadIdx.x == 0) loss[0] = A(total);
}

// On-chip path: one block per sample; the differences stay in registers until w_b is known.
template <typename T>
__global__ __launch_bounds__(kThreads) void on_chip_kernel(const T* x, const T* t, const T* f, SampleParams<acc_t<T>> p,
                                                           T* g, double* partial) {
  using A = acc_t<T>;
  using S = sum_t<T>;
  using Reduce = cub::BlockReduce<Pair<S>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ A w_shared;
  const int64_t dim = p.dim, off = int64_t(blockIdx.x) * dim;
  A diff[kOnChipItems];
  Pair<S> sums{S(0), S(0)};
#pragma unroll
  for (int k = 0; k < kOnChipItems; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * kThreads;
    diff[k] = A(0);
    if (i < dim) diff[k] = add_element(sums, to_acc(x[off + i]), to_acc(t[off + i]), to_acc(f[off + i]));
  }
  const Pair<S> total = Reduce(tmp).Sum(sums);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = total.first;
    partial[2 * blockIdx.x + 1] = total.second;
    w_shared = finish_sample(p, blockIdx.x, total.first, total.second).grad_scale;
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
// owns `slice` consecutive elements of the sample (a multiple of 8) and keeps their differences in shared
// memory. `vec`: every stream has the same 16-byte misalignment, so vec_loop can use vectors.
constexpr int kClusterThreads = 512;

template <typename T>
__global__ __launch_bounds__(kClusterThreads) void cluster_kernel(const T* x, const T* t, const T* f, int64_t slice,
                                                                  bool vec, SampleParams<acc_t<T>> p, T* g,
                                                                  double* partial) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  using A = acc_t<T>;
  using S = sum_t<T>;
  using Reduce = cub::BlockReduce<Pair<S>, kClusterThreads>;
  constexpr int N = Vec16<T>::kN;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ Pair<S> block_sum;
  __shared__ A w_shared;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* diff = reinterpret_cast<A*>(smem_raw);
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const int64_t dim = p.dim, b = blockIdx.y, begin = int64_t(rank) * slice;
  const int64_t len = begin < dim ? min(slice, dim - begin) : 0;
  const int64_t off = b * dim + begin;
  const T *xs = x + off, *ts = t + off, *fs = f + off;
  T* gs = g + off;
  const int64_t head = cuda::vec_head<T>(xs, len);
  Pair<S> s{S(0), S(0)};
  cuda::vec_loop<N>(
      len, head, vec, threadIdx.x, kClusterThreads,
      [&](int64_t i) { diff[i] = add_element(s, to_acc(xs[i]), to_acc(ts[i]), to_acc(fs[i])); },
      [&](int64_t j0) {
        const Vec16<T> xa = cuda::load_vec(xs, j0), ta = cuda::load_vec(ts, j0), fa = cuda::load_vec(fs, j0);
#pragma unroll
        for (int j = 0; j < N; ++j) diff[j0 + j] = add_element(s, to_acc(xa.v[j]), to_acc(ta.v[j]), to_acc(fa.v[j]));
      });
  const Pair<S> total = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) block_sum = total;
  cluster.sync();  // every block's sum is visible cluster-wide
  if (threadIdx.x == 0) {
    Pair<S> all{S(0), S(0)};  // rank order: every block gets the same sum
    for (unsigned r = 0; r < cluster.num_blocks(); ++r) all = all + *cluster.map_shared_rank(&block_sum, r);
    if (rank == 0) {
      partial[2 * b] = all.first;
      partial[2 * b + 1] = all.second;
    }
    w_shared = finish_sample(p, b, all.first, all.second).grad_scale;
  }
  __syncthreads();
  // This block has read the others' sums: arrive now, wait only before exiting (a block's shared memory
  // must outlive the other blocks' reads of it), so the barrier overlaps the gradient writes.
  auto token = cluster.barrier_arrive();
  const A w = w_shared;
  cuda::vec_loop<N>(
      len, head, vec, threadIdx.x, kClusterThreads, [&](int64_t i) { gs[i] = from_acc<T>(w * diff[i]); },
      [&](int64_t j0) {
        Vec16<T> out;
#pragma unroll
        for (int j = 0; j < N; ++j) out.v[j] = from_acc<T>(w * diff[j0 + j]);
        cuda::store_vec(gs, j0, out);
      });
  cluster.barrier_wait(std::move(token));
#else
  __trap();  // never launched: the host launches only images compiled for compute_90+ (image_supports_clusters)
#endif
}

// Per device and element type: whether the loaded cluster kernel can run (image_supports_clusters), the
// largest dynamic shared memory it may use, and whether 16-block (non-portable) clusters are allowed.
// The attributes are set once here, not on every launch.
struct ClusterSupport {
  bool ok = false, non_portable = false;
  int max_dynamic_smem = 0;
};

template <typename T>
const ClusterSupport& cluster_support(int device) {
  static cuda::PerDevice<ClusterSupport> cache;
  return cache.get(device, [](int dev) {
    ClusterSupport s;
    const void* kernel = reinterpret_cast<const void*>(cluster_kernel<T>);
    if (!cuda::image_supports_clusters(kernel, dev)) return s;
    int optin = 0;
    cudaFuncAttributes attr{};
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
        cudaFuncGetAttributes(&attr, kernel) != cudaSuccess ||
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             optin - static_cast<int>(attr.sharedSizeBytes)) != cudaSuccess) {
      cudaGetLastError();
      return s;
    }
    s.max_dynamic_smem = optin - static_cast<int>(attr.sharedSizeBytes);
    s.non_portable = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
    cudaGetLastError();
    s.ok = true;
    return s;
  });
}

// cudaOccupancyMaxActiveClusters for (device, kernel, cluster size, dynamic shared memory), cached: the
// answer is a property of the device and the kernel, and the query is not free (it used to run per call).
int max_active_clusters(const void* kernel, int device, int cluster, size_t smem) {
  struct Entry {
    const void* kernel;
    int device, cluster;
    size_t smem;
    int clusters;
  };
  static std::mutex mutex;
  static Entry entries[64];
  static int used = 0, next = 0;
  std::lock_guard<std::mutex> lock(mutex);
  for (int i = 0; i < used; ++i) {
    const Entry& e = entries[i];
    if (e.kernel == kernel && e.device == device && e.cluster == cluster && e.smem == smem) return e.clusters;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(cluster, 1);
  config.blockDim = dim3(kClusterThreads);
  config.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    cudaGetLastError();
    clusters = 0;
  }
  entries[next] = {kernel, device, cluster, smem, clusters};  // round-robin once full (never in practice)
  next = (next + 1) % 64;
  used = used < 64 ? used + 1 : 64;
  return clusters;
}

// Launches the cluster path if this device, image and shape allow it; false means "use the chunked path".
template <typename T>
bool try_launch_cluster(const FDistillArgs& a, bool vec, const SampleParams<acc_t<T>>& p, cudaStream_t s) {
  using A = acc_t<T>;
  if (a.batch > kMaxGridY) return false;
  const int device = cuda::current_device();
  if (device < 0) return false;
  const ClusterSupport& support = cluster_support<T>(device);
  if (!support.ok) return false;
  const void* kernel = reinterpret_cast<const void*>(cluster_kernel<T>);
  int best_size = 0, best_blocks = 0;
  int64_t best_slice = 0;
  for (int size : {8, 16}) {
    if (size == 16 && !support.non_portable) continue;
    const int64_t slice = ((a.dim + size - 1) / size + 7) / 8 * 8;
    const int64_t smem = slice * int64_t(sizeof(A));
    if (smem > support.max_dynamic_smem) continue;
    const int blocks = max_active_clusters(kernel, device, size, size_t(smem)) * size;
    if (blocks > best_blocks) {  // ties keep the smaller cluster
      best_size = size;
      best_blocks = blocks;
      best_slice = slice;
    }
  }
  if (best_blocks == 0) return false;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(best_size, static_cast<unsigned>(a.batch));
  config.blockDim = dim3(kClusterThreads);
  config.dynamicSmemBytes = size_t(best_slice) * sizeof(A);
  config.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = best_size;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  if (cudaLaunchKernelEx(&config, cluster_kernel<T>, static_cast<const T*>(a.x), static_cast<const T*>(a.teacher_x0),
                         static_cast<const T*>(a.fake_x0), best_slice, vec, p, static_cast<T*>(a.grad),
                         static_cast<double*>(a.workspace)) != cudaSuccess) {
    cudaGetLastError();  // a refused cluster launch is not sticky: fall back to the chunked path
    return false;
  }
  return true;
}

// Chunked pass 1: partial sums of one chunk of one sample.
template <typename T>
__global__ __launch_bounds__(kThreads) void partials_kernel(const T* x, const T* t, const T* f, int64_t batch,
                                                            int64_t dim, bool vec, double* partial) {
  using S = sum_t<T>;
  using Reduce = cub::BlockReduce<Pair<S>, kThreads>;
  constexpr int N = Vec16<T>::kN;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t begin = int64_t(blockIdx.x) * kFDistillChunkCuda;
  const int64_t len = min(kFDistillChunkCuda, dim - begin);
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t off = b * dim + begin;
    const T *xs = x + off, *ts = t + off, *fs = f + off;
    Pair<S> s{S(0), S(0)};
    cuda::vec_loop<N>(
        len, cuda::vec_head<T>(xs, len), vec, threadIdx.x, kThreads,
        [&](int64_t i) { add_element(s, to_acc(xs[i]), to_acc(ts[i]), to_acc(fs[i])); },
        [&](int64_t j0) {
          const Vec16<T> xa = cuda::load_vec(xs, j0), ta = cuda::load_vec(ts, j0), fa = cuda::load_vec(fs, j0);
#pragma unroll
          for (int j = 0; j < N; ++j) add_element(s, to_acc(xa.v[j]), to_acc(ta.v[j]), to_acc(fa.v[j]));
        });
    const Pair<S> total = Reduce(tmp).Sum(s);
    if (threadIdx.x == 0) {
      const int64_t job = b * gridDim.x + blockIdx.x;
      partial[2 * job] = total.first;
      partial[2 * job + 1] = total.second;
    }
    __syncthreads();  // tmp is reused by the next sample
  }
}

// Chunked pass 2: grad = grad_scale[b] * (fake - teacher).
template <typename T>
__global__ __launch_bounds__(kThreads) void grad_kernel(const T* t, const T* f, int64_t batch, int64_t dim, bool vec,
                                                        const double* grad_scale, T* g) {
  using A = acc_t<T>;
  constexpr int N = Vec16<T>::kN;
  const int64_t begin = int64_t(blockIdx.x) * kFDistillChunkCuda;
  const int64_t len = min(kFDistillChunkCuda, dim - begin);
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t off = b * dim + begin;
    const T *ts = t + off, *fs = f + off;
    T* gs = g + off;
    const A w = A(grad_scale[b]);
    cuda::vec_loop<N>(
        len, cuda::vec_head<T>(ts, len), vec, threadIdx.x, kThreads,
        [&](int64_t i) { gs[i] = from_acc<T>(w * (to_acc(fs[i]) - to_acc(ts[i]))); },
        [&](int64_t j0) {
          const Vec16<T> ta = cuda::load_vec(ts, j0), fa = cuda::load_vec(fs, j0);
          Vec16<T> out;
#pragma unroll
          for (int j = 0; j < N; ++j) out.v[j] = from_acc<T>(w * (to_acc(fa.v[j]) - to_acc(ta.v[j])));
          cuda::store_vec(gs, j0, out);
        });
  }
}

// The weights step (B values, one block), in double like the CPU's weights_impl: log h_b, r_b and the
// scaled [sum h, n] over the samples whose h is not NaN (f_distill_math.h).
template <typename L, typename A>
__global__ __launch_bounds__(kThreads) void weights_kernel(FDistillWeightsArgs a, double c) {
  using Reduce = cub::BlockReduce<Pair<double>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const L* logits = static_cast<const L*>(a.logits);
  const A* divisor = static_cast<const A*>(a.ratio_divisor);
  Pair<double> local{0.0, 0.0};
  for (int64_t b = threadIdx.x; b < a.batch; b += kThreads) {
    double mean = 0;
    for (int64_t k = 0; k < a.heads; ++k) mean += to_acc(logits[b * a.heads + k]);
    mean /= double(a.heads);
    const double l = clamp_keep_nan(mean, -a.logit_clamp, a.logit_clamp);
    double r = clamp_keep_nan(exp(l), a.ratio_lo, a.ratio_hi);
    if (divisor) r /= double(divisor[b]);
    const double log_h = f_distill_log_h(a.divergence, log(r));
    static_cast<A*>(a.ratio_out)[b] = A(r);
    static_cast<A*>(a.h_out)[b] = A(log_h);
    if (log_h == log_h) local = local + Pair<double>{exp(log_h - c), 1.0};
  }
  const Pair<double> sum = Reduce(tmp).Sum(local);
  if (threadIdx.x == 0) {
    static_cast<A*>(a.h_stats_out)[0] = A(sum.first);
    static_cast<A*>(a.h_stats_out)[1] = A(sum.second * exp(-c));
  }
}

template <typename T>
int launch_f_distill(const FDistillArgs& a, cudaStream_t s) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* t = static_cast<const T*>(a.teacher_x0);
  const T* f = static_cast<const T*>(a.fake_x0);
  T* g = static_cast<T*>(a.grad);
  const int64_t B = a.batch, D = a.dim, nchunks = f_distill_num_chunks(D, true);
  double* partial = static_cast<double*>(a.workspace);
  double* grad_scale = partial + 2 * B * nchunks;
  const SampleParams<A> p{static_cast<const A*>(a.h), static_cast<const A*>(a.h_stats), a.eps, a.scale, D};
  // One vector loop serves all four streams when they share their 16-byte misalignment (rows of any D).
  const bool vec = cuda::same_head<T>(x, t) && cuda::same_head<T>(x, f) && cuda::same_head<T>(x, g);
  auto finalize = [&](int64_t chunks) {
    finalize_kernel<A><<<1, kThreads, 0, s>>>(partial, B, chunks, p, grad_scale, static_cast<A*>(a.normalizer_out),
                                              static_cast<A*>(a.weight_out), static_cast<A*>(a.sample_loss),
                                              static_cast<A*>(a.loss));
  };
  if (D <= kOnChipMaxDim) {
    on_chip_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, s>>>(x, t, f, p, g, partial);
    finalize(1);
    return cuda::launch_status();
  }
  if (try_launch_cluster<T>(a, vec, p, s)) {
    finalize(1);
    return cuda::launch_status();
  }
  const dim3 grid(static_cast<unsigned>(nchunks), static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY));
  partials_kernel<T><<<grid, kThreads, 0, s>>>(x, t, f, B, D, vec, partial);
  finalize(nchunks);
  grad_kernel<T><<<grid, kThreads, 0, s>>>(t, f, B, D, vec, grad_scale, g);
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
    if (args.acc_dtype == DType::float64) {
      const double c = f_distill_h_log_scale<double>(args.divergence, args.ratio_lo, args.ratio_hi);
      weights_kernel<scalar_t, double><<<1, kThreads, 0, s>>>(args, c);
    } else {
      const double c = f_distill_h_log_scale<float>(args.divergence, args.ratio_lo, args.ratio_hi);
      weights_kernel<scalar_t, float><<<1, kThreads, 0, s>>>(args, c);
    }
    return cuda::launch_status();
  });
}

}  // namespace fdiv_ops
