// CUDA kernels of f_divergence_loss; the formulas are in include/fdiv_ops/f_divergence.h.
//
// One block per row (V up to ~256k: each thread strides over V/kThreads entries), three passes:
//   pass 1   per-thread online (max, sum exp) of z/T and t/T in one read of both rows, merged across
//            the block by a CUB reduction into (shift, log_sum) for each side
//   pass 2   loss = sum q f(p/q) and S = sum q psi(p/q) over the kept entries (categorical forms of
//            divergences.h), CUB block sum
//   pass 3   grad_j = scale/T (qpsi_j [kept] - q_j S), written once in the student's dtype
//   hard term (labels given): + w (LSE_1(z) - z_y) in the loss, + scale w (softmax(z)_j - [j=y]) in
//            pass 3; LSE_1 (temperature 1) costs one more read of z only when T != 1
// Pass 3 reads each z_j in the thread that then writes g_j, so grad may alias the student (in place).
// fp32 accumulation for bf16/fp16 (fp64 for fp64). 16-byte loads and stores (Vec16) when the rows are
// 16-byte aligned, scalar otherwise. Bytes that must move: read z and t three times (passes 2 and 3
// mostly hit L2: a 128k-entry bf16 row pair is 512 KB) and write the gradient once; no workspace, no
// (rows x V) buffer besides the gradient itself. The divergence is a uniform run-time switch
// (div_qf / div_qpsi), so one kernel per dtype serves all 13.
// Top-k form: pass 1 over the student row, the k teacher tokens reduced across the block, then one
// gradient pass over V and a second, after a barrier, that overwrites the k top-k entries.
#include <cub/block/block_reduce.cuh>

#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops {
namespace {

using cuda::from_acc;
using cuda::Pair;
using cuda::to_acc;
using cuda::Vec16;

constexpr int kThreads = 512;

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -pos_inf<A>();
}
template <typename A>
__device__ __forceinline__ A max_finite();
template <>
__device__ __forceinline__ float max_finite<float>() {
  return 3.402823466e38f;
}
template <>
__device__ __forceinline__ double max_finite<double>() {
  return 1.7976931348623157e308;
}
// q psi clamped to the finite range so that inf - inf never makes the gradient NaN (see the CPU kernel).
template <typename A>
__device__ __forceinline__ A finite(A x) {
  return clamp_(x, -max_finite<A>(), max_finite<A>());
}

// Online log-sum-exp state of one side: LSE = m + log(s).
template <typename A>
struct Lse {
  A m, s;
  __device__ __forceinline__ void add(A x) {
    const A nm = fmax_(m, x);
    if (is_neg_inf(nm)) return;  // nothing but -inf so far
    s = s * fexp(m - nm) + fexp(x - nm);
    m = nm;
  }
  __device__ __forceinline__ static Lse merge(const Lse& a, const Lse& b) {
    const A nm = fmax_(a.m, b.m);
    if (is_neg_inf(nm)) return {nm, A(0)};
    return {nm, a.s * fexp(a.m - nm) + b.s * fexp(b.m - nm)};
  }
};
template <typename A>
struct Lse2 {
  Lse<A> z, t;
};
struct MergeLse2 {
  template <typename A>
  __device__ __forceinline__ Lse2<A> operator()(const Lse2<A>& a, const Lse2<A>& b) const {
    return {Lse<A>::merge(a.z, b.z), Lse<A>::merge(a.t, b.t)};
  }
};

// Calls fn(j, x[j]) for j in [0, n) over the block, 16 bytes at a time when kVec.
template <bool kVec, typename T, typename Fn>
__device__ __forceinline__ void for_each(const T* x, int64_t n, Fn fn) {
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int N = Vec16<T>::kN;
    const auto* xv = reinterpret_cast<const Vec16<T>*>(x);
    for (int64_t v = threadIdx.x; v < n / N; v += kThreads) {
      const Vec16<T> xa = xv[v];
#pragma unroll
      for (int k = 0; k < N; ++k) fn(v * N + k, to_acc(xa.v[k]));
    }
    done = n / N * N;
  }
  for (int64_t j = done + threadIdx.x; j < n; j += kThreads) fn(j, to_acc(x[j]));
}

// Calls fn(j, x[j], y[j]) for j in [0, n) over the block.
template <bool kVec, typename T, typename Fn>
__device__ __forceinline__ void for_each2(const T* x, const T* y, int64_t n, Fn fn) {
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int N = Vec16<T>::kN;
    const auto* xv = reinterpret_cast<const Vec16<T>*>(x);
    const auto* yv = reinterpret_cast<const Vec16<T>*>(y);
    for (int64_t v = threadIdx.x; v < n / N; v += kThreads) {
      const Vec16<T> xa = xv[v], ya = yv[v];
#pragma unroll
      for (int k = 0; k < N; ++k) fn(v * N + k, to_acc(xa.v[k]), to_acc(ya.v[k]));
    }
    done = n / N * N;
  }
  for (int64_t j = done + threadIdx.x; j < n; j += kThreads) fn(j, to_acc(x[j]), to_acc(y[j]));
}

// g[j] = value(j, x[j]) for j in [0, n), 16-byte stores when kVec.
template <bool kVec, typename T, typename Fn>
__device__ __forceinline__ void write_each(const T* x, T* g, int64_t n, Fn value) {
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int N = Vec16<T>::kN;
    const auto* xv = reinterpret_cast<const Vec16<T>*>(x);
    auto* gv = reinterpret_cast<Vec16<T>*>(g);
    for (int64_t v = threadIdx.x; v < n / N; v += kThreads) {
      const Vec16<T> xa = xv[v];
      Vec16<T> out;
#pragma unroll
      for (int k = 0; k < N; ++k) out.v[k] = from_acc<T>(value(v * N + k, to_acc(xa.v[k])));
      gv[v] = out;
    }
    done = n / N * N;
  }
  for (int64_t j = done + threadIdx.x; j < n; j += kThreads) g[j] = from_acc<T>(value(j, to_acc(x[j])));
}

template <typename T>
__device__ __forceinline__ void zero_row(T* g, int64_t n) {
  for (int64_t j = threadIdx.x; j < n; j += kThreads) g[j] = from_acc<T>(acc_t<T>(0));
}

template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void dense_kernel(FDivergenceArgs a, DivergenceSpec spec) {
  using A = acc_t<T>;
  using LseReduce = cub::BlockReduce<Lse2<A>, kThreads>;
  using SumReduce = cub::BlockReduce<Pair<A>, kThreads>;
  __shared__ union {
    typename LseReduce::TempStorage lse;
    typename SumReduce::TempStorage sum;
  } tmp;
  using OneReduce = cub::BlockReduce<Lse<A>, kThreads>;
  __shared__ typename OneReduce::TempStorage tmp_one;
  __shared__ A sh_z[2], sh_t[2], sh_s, sh_one[2];

  const int64_t r = blockIdx.x, Vs = a.student_vocab, Vt = a.teacher_vocab, Vc = Vs < Vt ? Vs : Vt;
  const T* z = static_cast<const T*>(a.student) + r * Vs;
  const T* t = static_cast<const T*>(a.teacher) + r * Vt;
  T* g = static_cast<T*>(a.grad) + r * Vs;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature), t_scale = a.teacher_is_logprobs ? A(1) : inv_t;
  if (scale == A(0)) {  // an ignored row (uniform over the block)
    zero_row(g, Vs);
    if (threadIdx.x == 0) *loss_out = A(0);
    return;
  }

  // Pass 1: both log-sum-exps in one read of the common range, then the longer side's tail.
  Lse2<A> st{{neg_inf<A>(), A(0)}, {neg_inf<A>(), A(0)}};
  const bool logprobs = a.teacher_is_logprobs;
  for_each2<kVec>(z, t, Vc, [&](int64_t, A zv, A tv) {
    st.z.add(zv * inv_t);
    if (!logprobs) st.t.add(tv * inv_t);
  });
  for (int64_t j = Vc + threadIdx.x; j < Vs; j += kThreads) st.z.add(to_acc(z[j]) * inv_t);
  if (!logprobs)
    for (int64_t j = Vc + threadIdx.x; j < Vt; j += kThreads) st.t.add(to_acc(t[j]) * inv_t);
  const Lse2<A> all = LseReduce(tmp.lse).Reduce(st, MergeLse2());
  if (threadIdx.x == 0) {
    sh_z[0] = all.z.m;
    sh_z[1] = is_neg_inf(all.z.m) ? A(0) : flog(all.z.s);
    sh_t[0] = logprobs ? A(0) : all.t.m;
    sh_t[1] = (logprobs || is_neg_inf(all.t.m)) ? A(0) : flog(all.t.s);
  }
  __syncthreads();
  const A shift_z = sh_z[0], log_sum_z = sh_z[1], shift_t = sh_t[0], log_sum_t = sh_t[1];
  if (is_neg_inf(shift_z) || is_neg_inf(shift_t)) {  // a row of -inf: nothing kept
    zero_row(g, Vs);
    if (threadIdx.x == 0) *loss_out = A(0);
    return;
  }
  // (x - shift) - log_sum keeps the low bits that x - LSE would lose at |x| ~ 1e4
  auto log_q = [&](A zv) { return (zv * inv_t - shift_z) - log_sum_z; };
  auto log_p = [&](A tv) { return (tv * t_scale - shift_t) - log_sum_t; };

  // The hard term (uniform over the block): CE at temperature 1, so one more LSE of z when T != 1.
  const bool hard = a.labels != nullptr;
  const int64_t y = hard ? a.labels[r] : -1;
  if (hard && (y < 0 || y >= Vs)) {  // loud NaN rather than a read out of bounds
    const A nan = A(0) / A(0);
    for (int64_t j = threadIdx.x; j < Vs; j += kThreads) g[j] = from_acc<T>(nan);
    if (threadIdx.x == 0) *loss_out = nan;
    return;
  }
  if (hard) {
    if (inv_t != A(1)) {
      Lse<A> one{neg_inf<A>(), A(0)};
      for_each<kVec>(z, Vs, [&](int64_t, A zv) { one.add(zv); });
      const Lse<A> all1 =
          OneReduce(tmp_one).Reduce(one, [](const Lse<A>& u, const Lse<A>& v) { return Lse<A>::merge(u, v); });
      if (threadIdx.x == 0) {
        sh_one[0] = all1.m;
        sh_one[1] = flog(all1.s);
      }
    } else if (threadIdx.x == 0) {
      sh_one[0] = shift_z;
      sh_one[1] = log_sum_z;
    }
    __syncthreads();
  }
  const A shift_1 = hard ? sh_one[0] : A(0), log_sum_1 = hard ? sh_one[1] : A(0);
  const A hard_coef = hard ? scale * A(a.hard_weight) : A(0);
  // + scale w (softmax(z)_j - [j = y]); 0 without labels
  auto hard_grad = [&](int64_t j, A zv) {
    return hard ? hard_coef * (fexp((zv - shift_1) - log_sum_1) - (j == y ? A(1) : A(0))) : A(0);
  };

  // Pass 2: loss and S.
  Pair<A> acc{A(0), A(0)};
  for_each2<kVec>(z, t, Vc, [&](int64_t, A zv, A tv) {
    const A lq = log_q(zv), lp = log_p(tv);
    if (is_neg_inf(lq) || is_neg_inf(lp)) return;  // dropped entry
    acc.first += div_qf<StdMath>(spec, lq, lp);
    acc.second += finite(div_qpsi<StdMath>(spec, lq, lp));
  });
  __syncthreads();  // tmp is reused
  const Pair<A> total = SumReduce(tmp.sum).Sum(acc);
  if (threadIdx.x == 0) {
    sh_s = finite(total.second);
    // z_y is read here, before the barrier that precedes pass 3, so an in-place gradient cannot clobber it
    const A ce = hard ? -((to_acc(z[y]) - shift_1) - log_sum_1) : A(0);
    *loss_out = scale * (total.first + (hard ? A(a.hard_weight) * ce : A(0)));
  }
  __syncthreads();
  const A s = sh_s, coef = scale * inv_t;

  // Pass 3: the gradient. The teacher is re-read alongside the student over the common range. Each
  // element is read and written by the same thread, read first, so grad may alias the student row.
  if constexpr (kVec) {
    constexpr int N = Vec16<T>::kN;
    const auto* zv = reinterpret_cast<const Vec16<T>*>(z);
    const auto* tv = reinterpret_cast<const Vec16<T>*>(t);
    auto* gv = reinterpret_cast<Vec16<T>*>(g);
    for (int64_t v = threadIdx.x; v < Vc / N; v += kThreads) {
      const Vec16<T> za = zv[v], ta = tv[v];
      Vec16<T> out;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const A lq = log_q(to_acc(za.v[k])), lp = log_p(to_acc(ta.v[k]));
        const bool drop = is_neg_inf(lq) || is_neg_inf(lp);
        const A qpsi = drop ? A(0) : finite(div_qpsi<StdMath>(spec, lq, lp));
        out.v[k] = from_acc<T>(coef * (qpsi - fexp(lq) * s) + hard_grad(v * N + k, to_acc(za.v[k])));
      }
      gv[v] = out;
    }
  }
  for (int64_t j = (kVec ? Vc / Vec16<T>::kN * Vec16<T>::kN : 0) + threadIdx.x; j < Vc; j += kThreads) {
    const A lq = log_q(to_acc(z[j])), lp = log_p(to_acc(t[j]));
    const bool drop = is_neg_inf(lq) || is_neg_inf(lp);
    const A qpsi = drop ? A(0) : finite(div_qpsi<StdMath>(spec, lq, lp));
    g[j] = from_acc<T>(coef * (qpsi - fexp(lq) * s) + hard_grad(j, to_acc(z[j])));
  }
  // Student entries past the teacher's vocabulary: dropped, only the softmax normalisation remains.
  for (int64_t j = Vc + threadIdx.x; j < Vs; j += kThreads) {
    const A zv = to_acc(z[j]);
    g[j] = from_acc<T>(-coef * fexp(log_q(zv)) * s + hard_grad(j, zv));
  }
}

template <typename A>
struct TopkSums {
  A q_top, p_top, loss, s, bad;
  __device__ __forceinline__ TopkSums operator+(const TopkSums& o) const {
    return {q_top + o.q_top, p_top + o.p_top, loss + o.loss, s + o.s, bad + o.bad};
  }
};

template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void topk_kernel(FDivergenceTopkArgs a, DivergenceSpec spec) {
  using A = acc_t<T>;
  using LseReduce = cub::BlockReduce<Lse2<A>, kThreads>;
  using SumReduce = cub::BlockReduce<TopkSums<A>, kThreads>;
  __shared__ union {
    typename LseReduce::TempStorage lse;
    typename SumReduce::TempStorage sum;
  } tmp;
  __shared__ A sh_z[2], sh_s, sh_rest_coef, sh_bad;

  const int64_t r = blockIdx.x, V = a.vocab, k = a.k;
  const T* z = static_cast<const T*>(a.student) + r * V;
  const int64_t* idx = a.indices + r * k;
  const A* tl = static_cast<const A*>(a.teacher_logprobs) + r * k;
  T* g = static_cast<T*>(a.grad) + r * V;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature);
  if (scale == A(0)) {
    zero_row(g, V);
    if (threadIdx.x == 0) *loss_out = A(0);
    return;
  }

  Lse2<A> st{{neg_inf<A>(), A(0)}, {neg_inf<A>(), A(0)}};
  for_each<kVec>(z, V, [&](int64_t, A zv) { st.z.add(zv * inv_t); });
  const Lse2<A> all = LseReduce(tmp.lse).Reduce(st, MergeLse2());
  if (threadIdx.x == 0) {
    sh_z[0] = all.z.m;
    sh_z[1] = is_neg_inf(all.z.m) ? A(0) : flog(all.z.s);
  }
  __syncthreads();
  const A shift_z = sh_z[0], log_sum_z = sh_z[1];
  if (is_neg_inf(shift_z)) {
    zero_row(g, V);
    if (threadIdx.x == 0) *loss_out = A(0);
    return;
  }
  auto log_q = [&](A zv) { return (zv * inv_t - shift_z) - log_sum_z; };

  // The k teacher tokens: their masses, and their loss / q psi terms (an out-of-range index is flagged).
  TopkSums<A> part{A(0), A(0), A(0), A(0), A(0)};
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    const int64_t j = idx[i];
    if (j < 0 || j >= V) {
      part.bad += A(1);
      continue;
    }
    const A lq = log_q(to_acc(z[j])), lp = tl[i];
    part.q_top += fexp(lq);
    part.p_top += fexp(lp);
    if (is_neg_inf(lq) || is_neg_inf(lp)) continue;
    part.loss += div_qf<StdMath>(spec, lq, lp);
    part.s += finite(div_qpsi<StdMath>(spec, lq, lp));
  }
  __syncthreads();
  const TopkSums<A> sums = SumReduce(tmp.sum).Sum(part);
  if (threadIdx.x == 0) {
    // The bucket: the rest of each side's mass (clamped at 0 against rounding; 0 drops the bucket).
    const A lq_rest = flog(fmax_(A(1) - sums.q_top, A(0)));
    const A lp_rest = flog(fmax_(A(1) - sums.p_top, A(0)));
    const bool kept = !is_neg_inf(lq_rest) && !is_neg_inf(lp_rest);
    const A loss = sums.loss + (kept ? div_qf<StdMath>(spec, lq_rest, lp_rest) : A(0));
    const A s = finite(sums.s + (kept ? finite(div_qpsi<StdMath>(spec, lq_rest, lp_rest)) : A(0)));
    // psi of the bucket = q psi / q, evaluated at lq = 0 (psi depends on the log-ratio only)
    const A psi_rest = kept ? finite(div_qpsi<StdMath>(spec, A(0), lp_rest - lq_rest)) : A(0);
    sh_s = s;
    sh_rest_coef = finite(psi_rest - s);
    sh_bad = sums.bad;
    *loss_out = sums.bad > A(0) ? A(0) / A(0) : scale * loss;  // loud NaN, never a read out of bounds
  }
  __syncthreads();
  const A coef = scale * inv_t, s = sh_s, rest_coef = sh_rest_coef;
  if (sh_bad > A(0)) {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) g[j] = from_acc<T>(A(0) / A(0));
    return;
  }
  write_each<kVec>(z, g, V, [&](int64_t, A zv) { return coef * fexp(log_q(zv)) * rest_coef; });
  __syncthreads();  // the top-k entries below overwrite what other threads wrote above
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    const int64_t j = idx[i];
    const A lq = log_q(to_acc(z[j])), lp = tl[i];
    const bool drop = is_neg_inf(lq) || is_neg_inf(lp);
    const A qpsi = drop ? A(0) : finite(div_qpsi<StdMath>(spec, lq, lp));
    g[j] = from_acc<T>(coef * (qpsi - fexp(lq) * s));
  }
}

template <typename T>
bool aligned(const void* p, int64_t row_elems) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (row_elems * int64_t(sizeof(T))) % 16 == 0;
}

template <typename T>
int launch_dense(const FDivergenceArgs& a, cudaStream_t s) {
  if (a.rows == 0) return 0;
  const DivergenceSpec spec = canonical_spec(a.divergence);
  const bool vec = aligned<T>(a.student, a.student_vocab) && aligned<T>(a.grad, a.student_vocab) &&
                   aligned<T>(a.teacher, a.teacher_vocab);
  const dim3 grid(static_cast<unsigned>(a.rows));
  if (vec)
    dense_kernel<T, true><<<grid, kThreads, 0, s>>>(a, spec);
  else
    dense_kernel<T, false><<<grid, kThreads, 0, s>>>(a, spec);
  return cuda::launch_status();
}

template <typename T>
int launch_topk(const FDivergenceTopkArgs& a, cudaStream_t s) {
  if (a.rows == 0) return 0;
  const DivergenceSpec spec = canonical_spec(a.divergence);
  const bool vec = aligned<T>(a.student, a.vocab) && aligned<T>(a.grad, a.vocab);
  const dim3 grid(static_cast<unsigned>(a.rows));
  if (vec)
    topk_kernel<T, true><<<grid, kThreads, 0, s>>>(a, spec);
  else
    topk_kernel<T, false><<<grid, kThreads, 0, s>>>(a, spec);
  return cuda::launch_status();
}

}  // namespace

int f_divergence_cuda(const FDivergenceArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] { return launch_dense<scalar_t>(args, s); });
}

int f_divergence_topk_cuda(const FDivergenceTopkArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half, [&] { return launch_topk<scalar_t>(args, s); });
}

}  // namespace fdiv_ops
