// CUDA kernels of sequence_logprobs; the formulas are in include/fdiv_ops/sequence_logprobs.h, the online
// row state (max, sum with the max terms counted exactly, entropy moment) in include/fdiv_ops/row_moments.h,
// the same code as the CPU's.
//
// Forward: one block per row. Each thread keeps a RowMoments over its strided slice of the row (16-byte
// loads through cuda::vec_loop, any V and any row offset), raising its max once per loaded vector; a CUB
// block reduction merges the per-thread states. Thread 0 reads the label's logit and writes log p(y), the
// entropy and (m, log S).
// Backward: one block per row, re-reading the row and writing dL/dz in the logits' dtype.
// Transcendentals per element: forward 1 exp (plus 1 per vector whose max raises the thread's running max,
// and 2 per state merge in the reduction, i.e. per thread, not per element); backward 1 exp (the label's
// entry 1 expm1 more). Per row: 1 log1p.
// NaN: a NaN logit makes its row's log-probability, entropy and whole gradient NaN (nan_max keeps it in the
// max), the other rows are untouched, as on the CPU.
// Bytes moved: forward rows*V*sizeof(T) read; backward rows*V*sizeof(T) read + written. Deterministic
// (fixed reduction order, no atomics), no allocation, no host synchronisation.
#include <cub/block/block_reduce.cuh>
#include <limits>

#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/platform.h"
#include "fdiv_ops/row_moments.h"
#include "fdiv_ops/sequence_logprobs.h"

namespace fdiv_ops {
namespace {

using cuda::from_acc;
using cuda::to_acc;
using cuda::Vec16;

constexpr int kThreads = 256;
constexpr unsigned kMaxGrid = 1u << 30;

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -pos_inf<A>();
}
template <typename A>
__device__ __forceinline__ A quiet_nan() {
  return std::numeric_limits<A>::quiet_NaN();
}

struct MergeMoments {
  template <typename A>
  __device__ __forceinline__ RowMoments<A> operator()(const RowMoments<A>& a, const RowMoments<A>& b) const {
    return RowMoments<A>::merge(a, b);
  }
};

// Adds N values s[] (already divided by T) to the running state: the max raised at most once (one exp),
// then one exp per value. The terms equal to the max are counted in `ones` (row_moments.h).
template <typename A, int N>
__device__ __forceinline__ void accumulate(RowMoments<A>& st, const A (&s)[N], bool entropy) {
  A local_max = s[0];
#pragma unroll
  for (int j = 1; j < N; ++j) local_max = nan_max(local_max, s[j]);
  st.raise_max(local_max);
  if (is_neg_inf(st.m)) return;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const A d = s[j] - st.m;
    const A e = fexp(d);
    st.ones += d == A(0) ? A(1) : A(0);
    st.rest += d < A(0) ? e : A(0);
    if (entropy && e != A(0)) st.w += e * d;  // e^d d -> 0 as d -> -inf, never 0 * inf
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

// The row of every stream shares its 16-byte misalignment with itself only; vec_loop vectorises any row
// (odd V, shifted views) with a scalar head and tail.
template <typename T>
__global__ __launch_bounds__(kThreads) void forward_kernel(SeqLogprobsArgs a) {
  using A = acc_t<T>;
  using Reduce = cub::BlockReduce<RowMoments<A>, kThreads>;
  constexpr int N = Vec16<T>::kN;
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
    RowMoments<A> st = RowMoments<A>::empty();
    cuda::vec_loop<N>(
        V, cuda::vec_head<T>(z, V), true, threadIdx.x, kThreads,
        [&](int64_t i) {
          const A s[1] = {to_acc(z[i]) * inv_t};
          accumulate(st, s, entropy);
        },
        [&](int64_t j0) {
          const Vec16<T> x = cuda::load_vec(z, j0);
          A s[N];
#pragma unroll
          for (int j = 0; j < N; ++j) s[j] = to_acc(x.v[j]) * inv_t;
          accumulate(st, s, entropy);
        });
    const RowMoments<A> total = Reduce(tmp).Reduce(st, MergeMoments());
    if (threadIdx.x == 0) {
      A lp, h = A(0), log_s;
      if (is_neg_inf(total.m)) {  // all -inf: no distribution; -inf log-prob, entropy 0, no gradient
        lp = log_s = neg_inf<A>();
      } else {  // finite or NaN (a NaN logit: NaN log-prob, entropy and gradient for this row only)
        log_s = total.log_sum();
        lp = (to_acc(z[in.labels[r]]) * inv_t - total.m) - log_s;
        h = total.entropy(log_s);
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

template <typename T>
__global__ __launch_bounds__(kThreads) void backward_kernel(SeqLogprobsBackwardArgs a) {
  using A = acc_t<T>;
  constexpr int N = Vec16<T>::kN;
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
    const bool zero = row_kind(in, r) != 2 || is_neg_inf(m);  // a NaN m (NaN row) is not zero: NaN gradient
    const int64_t y = zero ? -1 : in.labels[r];
    const A g = (zero || !g_lp) ? A(0) : g_lp[r];
    const A g_h = (zero || !g_ent) ? A(0) : g_ent[r];
    const A h = (g_ent && ent && !zero) ? ent[r] : A(0);
    const T* z = row_ptr<T>(in, r);
    // Zero rows are written without reading the logits; otherwise the row and its gradient must share
    // their misalignment for one vector loop (a shifted view may not: then the loop is scalar).
    const bool vec = zero || cuda::same_head<T>(z, out);
    cuda::vec_loop<N>(
        V, cuda::vec_head<T>(out, V), vec, threadIdx.x, kThreads,
        [&](int64_t i) {
          out[i] = from_acc<T>(zero ? A(0) : grad_at(to_acc(z[i]), i == y, inv_t, m, log_s, g, g_h, h));
        },
        [&](int64_t j0) {
          Vec16<T> o;
          if (zero) {
#pragma unroll
            for (int j = 0; j < N; ++j) o.v[j] = from_acc<T>(A(0));
          } else {
            const Vec16<T> x = cuda::load_vec(z, j0);
#pragma unroll
            for (int j = 0; j < N; ++j)
              o.v[j] = from_acc<T>(grad_at(to_acc(x.v[j]), j0 + j == y, inv_t, m, log_s, g, g_h, h));
          }
          cuda::store_vec(out, j0, o);
        });
  }
}

unsigned grid_for(int64_t rows) { return static_cast<unsigned>(rows < int64_t(kMaxGrid) ? rows : kMaxGrid); }

}  // namespace

int seq_logprobs_cuda(const SeqLogprobsArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = args.in.outer * args.in.inner;
  if (rows == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.in.dtype, __nv_bfloat16, __half, [&] {
    forward_kernel<scalar_t><<<grid_for(rows), kThreads, 0, s>>>(args);
    return cuda::launch_status();
  });
}

int seq_logprobs_backward_cuda(const SeqLogprobsBackwardArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = args.in.outer * args.in.inner;
  if (rows == 0 || args.in.vocab == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.in.dtype, __nv_bfloat16, __half, [&] {
    backward_kernel<scalar_t><<<grid_for(rows), kThreads, 0, s>>>(args);
    return cuda::launch_status();
  });
}

}  // namespace fdiv_ops
