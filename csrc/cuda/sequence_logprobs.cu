// CUDA kernels of sequence_logprobs; the formulas are in include/fdiv_ops/sequence_logprobs.h.
//
// Forward: one block per row. Each thread keeps an online (m, S, W) over its strided slice of the row
// (16-byte loads when every row is 16-byte aligned), rescaling once per loaded vector; a CUB block reduction
// merges the per-thread states with the same rescaling rule. Thread 0 reads the label's logit and writes
// log p(y), the entropy and (m, log S).
// Backward: one block per row, re-reading the row and writing dL/dz in the logits' dtype.
// Bytes moved: forward rows*V*sizeof(T) read; backward rows*V*sizeof(T) read + written. Deterministic
// (fixed reduction order, no atomics), no allocation, no host synchronisation.
#include <cub/block/block_reduce.cuh>
#include <limits>

#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/platform.h"
#include "fdiv_ops/sequence_logprobs.h"

namespace fdiv_ops {
namespace {

using cuda::from_acc;
using cuda::to_acc;
using cuda::Vec16;

constexpr int kThreads = 256;
constexpr unsigned kMaxGrid = 1u << 30;

template <typename A>
struct Online {
  A m, S, W;  // max of s, sum e^(s - m), sum e^(s - m) (s - m)
};

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -pos_inf<A>();
}
template <typename A>
__device__ __forceinline__ A quiet_nan() {
  return std::numeric_limits<A>::quiet_NaN();
}

// (S, W) of `st` re-expressed relative to a larger max M; an empty state stays empty (no -inf * 0).
template <typename A>
__device__ __forceinline__ Online<A> shift_to(const Online<A>& st, A M) {
  if (st.S == A(0)) return {M, A(0), A(0)};
  const A sc = fexp(st.m - M);
  return {M, sc * st.S, sc * (st.W + (st.m - M) * st.S)};
}

struct MergeOnline {
  template <typename A>
  __device__ __forceinline__ Online<A> operator()(const Online<A>& a, const Online<A>& b) const {
    const A M = fmax_(a.m, b.m);
    if (M == neg_inf<A>()) return {M, A(0), A(0)};
    const Online<A> x = shift_to(a, M), y = shift_to(b, M);
    return {M, x.S + y.S, x.W + y.W};
  }
};

// Adds n values s[] (already divided by T) to the running state, rescaling at most once.
template <typename A, int N>
__device__ __forceinline__ void accumulate(Online<A>& st, const A (&s)[N], bool entropy) {
  A local_max = s[0];
#pragma unroll
  for (int j = 1; j < N; ++j) local_max = fmax_(local_max, s[j]);
  if (local_max > st.m) st = shift_to(st, local_max);
  if (st.m == neg_inf<A>()) return;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const A d = s[j] - st.m;
    const A e = fexp(d);
    st.S += e;
    if (entropy && e != A(0)) st.W += e * d;
  }
}

template <typename T>
__device__ __forceinline__ const T* row_ptr(const SeqLogprobsLayout& in, int64_t row) {
  const int64_t o = row / in.inner, i = row % in.inner;
  return static_cast<const T*>(in.logits) + o * in.outer_stride + i * in.inner_stride;
}

__device__ __forceinline__ int row_kind(const SeqLogprobsLayout& in, int64_t row) {  // 0 ignored, 1 invalid, 2 ok
  const int64_t y = in.labels[row];
  if (y == in.ignore_index) return 0;
  return (y < 0 || y >= in.vocab) ? 1 : 2;
}

template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void forward_kernel(SeqLogprobsArgs a) {
  using A = acc_t<T>;
  using Reduce = cub::BlockReduce<Online<A>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const SeqLogprobsLayout& in = a.in;
  const int64_t rows = in.outer * in.inner, V = in.vocab;
  const A inv_t = A(in.inv_temperature);
  const bool entropy = a.entropy != nullptr;
  A* logp = static_cast<A*>(a.logprobs);
  A* ent = static_cast<A*>(a.entropy);
  A* stats = static_cast<A*>(a.row_stats);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int kind = row_kind(in, r);  // uniform across the block
    if (kind != 2) {
      if (threadIdx.x == 0) {
        const A v = kind == 1 ? quiet_nan<A>() : A(0);
        logp[r] = v;
        if (entropy) ent[r] = v;
        stats[2 * r] = A(0);
        stats[2 * r + 1] = A(0);
      }
      continue;
    }
    const T* z = row_ptr<T>(in, r);
    Online<A> st{neg_inf<A>(), A(0), A(0)};
    int64_t tail = 0;
    if constexpr (kVec) {
      constexpr int N = Vec16<T>::kN;
      const auto* zv = reinterpret_cast<const Vec16<T>*>(z);
      for (int64_t i = threadIdx.x; i < V / N; i += kThreads) {
        const Vec16<T> x = zv[i];
        A s[N];
#pragma unroll
        for (int j = 0; j < N; ++j) s[j] = to_acc(x.v[j]) * inv_t;
        accumulate(st, s, entropy);
      }
      tail = (V / N) * N;
    }
    for (int64_t i = tail + threadIdx.x; i < V; i += kThreads) {
      const A s[1] = {to_acc(z[i]) * inv_t};
      accumulate(st, s, entropy);
    }
    const Online<A> total = Reduce(tmp).Reduce(st, MergeOnline());
    if (threadIdx.x == 0) {
      A lp, h = A(0), log_s;
      if (total.m == neg_inf<A>()) {
        lp = log_s = neg_inf<A>();
      } else {
        log_s = flog(total.S);
        lp = (to_acc(z[in.labels[r]]) * inv_t - total.m) - log_s;
        h = log_s - total.W / total.S;
      }
      logp[r] = lp;
      if (entropy) ent[r] = h;
      stats[2 * r] = total.m;
      stats[2 * r + 1] = log_s;
    }
    __syncthreads();  // tmp is reused by the next row
  }
}

template <typename A>
__device__ __forceinline__ A grad_at(A zv, bool is_label, A inv_t, A m, A log_s, A g, A g_h, A h) {
  const A log_p = (zv * inv_t - m) - log_s;
  const A p = fexp(log_p);
  A grad = is_label ? -inv_t * g * fexpm1(log_p) : -inv_t * g * p;
  if (g_h != A(0) && p != A(0)) grad -= inv_t * g_h * p * (log_p + h);
  return grad;
}

template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void backward_kernel(SeqLogprobsBackwardArgs a) {
  using A = acc_t<T>;
  const SeqLogprobsLayout& in = a.in;
  const int64_t rows = in.outer * in.inner, V = in.vocab;
  const A inv_t = A(in.inv_temperature);
  const A* stats = static_cast<const A*>(a.row_stats);
  const A* ent = static_cast<const A*>(a.entropy);
  const A* g_lp = static_cast<const A*>(a.grad_logprobs);
  const A* g_ent = static_cast<const A*>(a.grad_entropy);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* out = static_cast<T*>(a.grad_logits) + r * V;
    const A m = stats[2 * r], log_s = stats[2 * r + 1];
    const bool zero = row_kind(in, r) != 2 || m == neg_inf<A>();
    const int64_t y = zero ? -1 : in.labels[r];
    const A g = (zero || !g_lp) ? A(0) : g_lp[r];
    const A g_h = (zero || !g_ent) ? A(0) : g_ent[r];
    const A h = (g_ent && ent && !zero) ? ent[r] : A(0);
    const T* z = row_ptr<T>(in, r);
    int64_t tail = 0;
    if constexpr (kVec) {
      constexpr int N = Vec16<T>::kN;
      const auto* zv = reinterpret_cast<const Vec16<T>*>(z);
      auto* ov = reinterpret_cast<Vec16<T>*>(out);
      for (int64_t i = threadIdx.x; i < V / N; i += kThreads) {
        Vec16<T> o;
        if (zero) {
#pragma unroll
          for (int j = 0; j < N; ++j) o.v[j] = from_acc<T>(A(0));
        } else {
          const Vec16<T> x = zv[i];
#pragma unroll
          for (int j = 0; j < N; ++j)
            o.v[j] = from_acc<T>(grad_at(to_acc(x.v[j]), i * N + j == y, inv_t, m, log_s, g, g_h, h));
        }
        ov[i] = o;
      }
      tail = (V / N) * N;
    }
    for (int64_t i = tail + threadIdx.x; i < V; i += kThreads)
      out[i] = from_acc<T>(zero ? A(0) : grad_at(to_acc(z[i]), i == y, inv_t, m, log_s, g, g_h, h));
  }
}

// 16-byte vector loads need every row start (and the gradient's rows) 16-byte aligned.
template <typename T>
bool rows_aligned(const SeqLogprobsLayout& in, const void* out) {
  const auto addr = reinterpret_cast<uintptr_t>(in.logits) | reinterpret_cast<uintptr_t>(out);
  const int64_t b = sizeof(T);
  return addr % 16 == 0 && (in.vocab * b) % 16 == 0 && (in.outer_stride * b) % 16 == 0 &&
         (in.inner_stride * b) % 16 == 0;
}

unsigned grid_for(int64_t rows) { return static_cast<unsigned>(rows < int64_t(kMaxGrid) ? rows : kMaxGrid); }

}  // namespace

int seq_logprobs_cuda(const SeqLogprobsArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = args.in.outer * args.in.inner;
  if (rows == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.in.dtype, __nv_bfloat16, __half, [&] {
    if (rows_aligned<scalar_t>(args.in, nullptr))
      forward_kernel<scalar_t, true><<<grid_for(rows), kThreads, 0, s>>>(args);
    else
      forward_kernel<scalar_t, false><<<grid_for(rows), kThreads, 0, s>>>(args);
    return cuda::launch_status();
  });
}

int seq_logprobs_backward_cuda(const SeqLogprobsBackwardArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = args.in.outer * args.in.inner;
  if (rows == 0 || args.in.vocab == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.in.dtype, __nv_bfloat16, __half, [&] {
    if (rows_aligned<scalar_t>(args.in, args.grad_logits))
      backward_kernel<scalar_t, true><<<grid_for(rows), kThreads, 0, s>>>(args);
    else
      backward_kernel<scalar_t, false><<<grid_for(rows), kThreads, 0, s>>>(args);
    return cuda::launch_status();
  });
}

}  // namespace fdiv_ops
