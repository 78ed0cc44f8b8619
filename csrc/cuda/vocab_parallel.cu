// CUDA kernels of the vocabulary-parallel ops (the phases and formulas: include/fdiv_ops/vocab_parallel.h, the
// same per-entry code as the CPU's: vp_entry with the shared categorical functors, StdMath).
//
// One block of 256 threads per row (grid-stride over rows), each thread over a strided slice of the shard's
// columns, CUB block reductions (float64 for the row sums), no atomics: deterministic. The divergence is switched
// once per row, outside the column loops (a uniform branch: one kernel per dtype, not per divergence).
//   vp_row_stats   max (NaN counted as +inf), then sum e^(x - max) (and the entropy's moment): 2 reads of the row
//   vp_kd_partial  loss and S partials (2 exp + the categorical form per entry), the label's logit
//   vp_kd_grad     the gradient, recomputing q, p and q psi~ (may overwrite the student's logits in place: every
//                  z_j is read by the thread that writes g_j), and the row loss
//   vp_seq_grad    the sequence_logprobs backward (1 exp per entry)
// Scalar loads (no 16-byte vectors yet): a first, correct version; not measured on a GPU.
// No allocation, no host synchronisation; launchers return the launch's cudaError_t.
#include <cub/block/block_reduce.cuh>
#include <limits>

// make_cat_series (host code in divergences.h) returns early for total_variation, which has no near series; nvcc
// flags its fitting loop as unreachable in that instantiation.
#pragma nv_diag_suppress 128

#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/vocab_parallel.h"

namespace fdiv_ops {
namespace {

using cuda::from_acc;
using cuda::to_acc;

constexpr int kThreads = 256;
constexpr unsigned kMaxGrid = 1u << 30;

unsigned grid_for(int64_t rows) { return static_cast<unsigned>(rows < int64_t(kMaxGrid) ? rows : kMaxGrid); }

struct PoisonMaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return poison_max(a, b);
  }
};

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -pos_inf<A>();
}

template <typename T>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(VpRowStatsArgs a) {
  using A = acc_t<T>;
  using MaxReduce = cub::BlockReduce<A, kThreads>;
  using SumReduce = cub::BlockReduce<double, kThreads>;
  __shared__ union {
    typename MaxReduce::TempStorage max;
    typename SumReduce::TempStorage sum;
  } tmp;
  __shared__ A row_max;
  const A scale = A(a.scale);
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const T* z = static_cast<const T*>(a.logits) + r * a.vocab;
    A m = neg_inf<A>();
    for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) m = poison_max(m, to_acc(z[j]) * scale);
    m = MaxReduce(tmp.max).Reduce(m, PoisonMaxOp{});
    if (threadIdx.x == 0) row_max = m;
    __syncthreads();
    m = row_max;
    A s = 0, w = 0;
    if (!is_neg_inf(m) && !row_poisoned(m)) {
      for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) {
        const A d = to_acc(z[j]) * scale - m;
        const A e = fexp(d);
        s += e;
        w += is_neg_inf(d) ? A(0) : e * d;
      }
    }
    const double s_tot = SumReduce(tmp.sum).Sum(double(s));
    __syncthreads();
    const double w_tot = a.with_moment ? SumReduce(tmp.sum).Sum(double(w)) : 0.0;
    if (threadIdx.x == 0) {
      A* out = static_cast<A*>(a.stats) + r * a.stride + a.col;
      out[0] = m;
      out[1] = A(s_tot);
      if (a.with_moment) out[2] = A(w_tot);
    }
    __syncthreads();
  }
}

// The launch's constants in the accumulation type (built on the host: the near-r = 1 fit is host code).
template <typename A>
struct KdSetup {
  CatParam<A> param;
  CatSeries<A> series;
  A c1;
  DivergenceSpec spec;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) kd_partial_kernel(VpKdArgs a, KdSetup<acc_t<T>> setup) {
  using A = acc_t<T>;
  using SumReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename SumReduce::TempStorage tmp;
  const int64_t plane = a.rows, vs = a.vs, vt = a.vt, vc = vs < vt ? vs : vt;
  const bool hard = a.labels != nullptr;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    A* out = static_cast<A*>(a.partial) + r;
    const A scale = static_cast<const A*>(a.row_scale)[r];
    const double* lse = a.lse + 3 * r;
    if (vp_row_state<A>(scale, lse[0], lse[1], lse[2]) != 0) {  // uniform over the block
      if (threadIdx.x == 0) out[0] = out[plane] = out[2 * plane] = A(0);
      continue;
    }
    const T* z = static_cast<const T*>(a.student) + r * vs;
    const T* t = static_cast<const T*>(a.teacher) + r * vt;
    const VpRow<A> rs = vp_row<A>(a, lse[0], lse[1]);
    const A c1 = setup.c1;
    double loss = 0, s = 0, tail_q = 0, tail_p = 0;
    FDIV_DIVERGENCE_SWITCH(setup.spec.kind, [&](auto div) {
      using Div = decltype(div);
      for (int64_t j = threadIdx.x; j < vc; j += kThreads) {
        A q, p, qf, qpsi;
        bool keep;
        vp_entry<Div, StdMath>(to_acc(z[j]), to_acc(t[j]), rs, setup.param, setup.series, c1, &q, &p, &qf, &qpsi,
                               &keep);
        loss += double(keep ? qf : c1 * (q - p));
        s += double(qpsi);
      }
      return 0;
    });
    for (int64_t j = vc + threadIdx.x; j < vs; j += kThreads)
      tail_q += double(fexp(to_acc(z[j]) * rs.inv_t - rs.lse_z));
    for (int64_t j = vc + threadIdx.x; j < vt; j += kThreads)
      tail_p += double(fexp(to_acc(t[j]) * rs.t_scale - rs.lse_t));
    const double loss_tot = SumReduce(tmp).Sum(loss + double(c1) * (tail_q - tail_p));
    __syncthreads();
    const double s_tot = SumReduce(tmp).Sum(s + double(c1) * tail_q);
    __syncthreads();
    if (threadIdx.x == 0) {
      out[0] = A(loss_tot);
      out[plane] = A(s_tot);
      const int64_t y = hard ? a.labels[r] : -1;
      out[2 * plane] = (hard && y >= 0 && y < vs) ? to_acc(z[y]) : A(0);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) kd_grad_kernel(VpKdArgs a, KdSetup<acc_t<T>> setup) {
  using A = acc_t<T>;
  const int64_t plane = a.rows, vs = a.vs, vt = a.vt, vc = vs < vt ? vs : vt;
  const bool hard = a.labels != nullptr;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const A scale = static_cast<const A*>(a.row_scale)[r];
    const double* lse = a.lse + 3 * r;
    const A* tot = static_cast<const A*>(a.totals) + r;
    T* g = static_cast<T*>(a.grad) + r * vs;
    const int state = vp_row_state<A>(scale, lse[0], lse[1], lse[2]);
    if (state != 0) {
      const A fill = state == 2 ? std::numeric_limits<A>::quiet_NaN() : A(0);
      for (int64_t j = threadIdx.x; j < vs; j += kThreads) g[j] = from_acc<T>(fill);
      if (threadIdx.x == 0) static_cast<A*>(a.row_loss)[r] = fill;
      continue;
    }
    const T* z = static_cast<const T*>(a.student) + r * vs;
    const T* t = static_cast<const T*>(a.teacher) + r * vt;
    const VpRow<A> rs = vp_row<A>(a, lse[0], lse[1]);
    const A c1 = setup.c1, s = finite_or_nan(tot[plane]), coef = scale * rs.inv_t;
    const A hard_coef = hard ? scale * A(a.hard_weight) : A(0), lse_1 = A(lse[2]);
    const int64_t y = hard ? a.labels[r] : -1;
    if (threadIdx.x == 0)  // reads no logits: safe while other threads overwrite them in place
      static_cast<A*>(a.row_loss)[r] =
          A(double(scale) * vp_row_loss(a, double(c1), lse[1], lse[2], double(tot[0]), double(tot[2 * plane]), hard));
    FDIV_DIVERGENCE_SWITCH(setup.spec.kind, [&](auto div) {
      using Div = decltype(div);
      for (int64_t j = threadIdx.x; j < vc; j += kThreads) {
        const A zj = to_acc(z[j]);
        A q, p, qf, qpsi;
        bool keep;
        vp_entry<Div, StdMath>(zj, to_acc(t[j]), rs, setup.param, setup.series, c1, &q, &p, &qf, &qpsi, &keep);
        A gj = coef * (qpsi - q * s);
        if (hard) gj += hard_coef * (fexp(zj - lse_1) - (j == y ? A(1) : A(0)));
        g[j] = from_acc<T>(gj);
      }
      return 0;
    });
    const A tail = coef * (c1 - s);
    for (int64_t j = vc + threadIdx.x; j < vs; j += kThreads) {
      const A zj = to_acc(z[j]);
      A gj = fexp(zj * rs.inv_t - rs.lse_z) * tail;
      if (hard) gj += hard_coef * (fexp(zj - lse_1) - (j == y ? A(1) : A(0)));
      g[j] = from_acc<T>(gj);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) seq_grad_kernel(VpSeqGradArgs a) {
  using A = acc_t<T>;
  const A inv_t = A(a.inv_temperature);
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    T* g = static_cast<T*>(a.grad) + r * a.vocab;
    const int64_t yl = a.local_label[r];
    const double lse = a.lse[r];
    if (yl == -2 || is_neg_inf(lse)) {  // ignored, or a row of -inf: no gradient
      for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) g[j] = from_acc<T>(A(0));
      continue;
    }
    const T* z = static_cast<const T*>(a.logits) + r * a.vocab;
    const A gl = a.grad_logprobs ? static_cast<const A*>(a.grad_logprobs)[r] : A(0);
    const A gh = a.grad_entropy ? static_cast<const A*>(a.grad_entropy)[r] : A(0);
    const A lz = A(lse), h = a.entropy ? A(a.entropy[r]) : A(0);
    for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) {
      const A lp = to_acc(z[j]) * inv_t - lz;
      const A p = fexp(lp);
      A gj = gl * ((j == yl ? A(1) : A(0)) - p);
      if (a.grad_entropy) gj -= gh * (p > A(0) ? p * (lp + h) : A(0));
      g[j] = from_acc<T>(inv_t * gj);
    }
  }
}

template <typename A>
KdSetup<A> kd_setup(const VpKdArgs& args) {
  const DivergenceSpec spec = canonical_spec(args.divergence);
  return {make_cat_param(A(spec.param)), make_cat_series<A>(spec), div_c1<A>(spec), spec};
}

}  // namespace

int vp_row_stats_cuda(const VpRowStatsArgs& args, void* stream) {
  if (args.rows == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] {
    row_stats_kernel<scalar_t><<<grid_for(args.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return cuda::launch_status();
  });
}

int vp_kd_partial_cuda(const VpKdArgs& args, void* stream) {
  if (args.rows == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] {
    kd_partial_kernel<scalar_t><<<grid_for(args.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        args, kd_setup<acc_t<scalar_t>>(args));
    return cuda::launch_status();
  });
}

int vp_kd_grad_cuda(const VpKdArgs& args, void* stream) {
  if (args.rows == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] {
    kd_grad_kernel<scalar_t><<<grid_for(args.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        args, kd_setup<acc_t<scalar_t>>(args));
    return cuda::launch_status();
  });
}

int vp_seq_grad_cuda(const VpSeqGradArgs& args, void* stream) {
  if (args.rows == 0) return 0;
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] {
    seq_grad_kernel<scalar_t><<<grid_for(args.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return cuda::launch_status();
  });
}

}  // namespace fdiv_ops
