// The pieces of one token-KD row shared by the streaming and the cluster kernels of f_divergence_loss
// (formulas: include/fdiv_ops/f_divergence.h). Each piece is block-strided over a slice of a row that lives
// either in global memory (streaming kernel) or in shared memory (cluster kernel), through the one
// 16-byte-vector loop of cuda_utils.cuh; Div is one functor of divergences.h, fixed per kernel, so no
// switch sits in any element loop.
//
// Transcendentals per element (StdMath: CUDA's expf/logf/log1pf, full precision):
//   pass 1   one exp per side (the online log-sum-exp, lse_add below); the teacher side is skipped when
//            teacher_is_logprobs; a third side (z at temperature 1) only for the hard term with T != 1
//   pass 2   Div::qf + Div::qpsi (forward_kl: 1 exp, the two share exp(lp); js: 2 exp + 1 log1p + 1 exp)
//   pass 3   Div::qpsi + exp(lq) (+ 1 exp for the hard term)
#pragma once

#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/f_divergence.h"
#include "fdiv_ops/row_math.h"

namespace fdiv_ops::token_kd {

using cuda::from_acc;
using cuda::load_vec;
using cuda::Pair;
using cuda::store_vec;
using cuda::to_acc;
using cuda::Vec;
using cuda::Vec16;
using cuda::vec_head;
using cuda::vec_loop;

constexpr int kThreads = 512;

// float64 is the checking dtype, not a speed target: its kernels run scalar loops only (half the code).
template <typename T>
constexpr bool kVectorised = sizeof(T) < 8;
// Passes 2 and 3 evaluate the divergence per element (tens to hundreds of instructions): their vectors hold
// 4 elements (8 bytes of bf16/fp16, 16 of float32), so each loop holds 5 copies of the element code, not 9,
// and every kernel stays within ~4k instructions. Pass 1 and the copies use 16-byte vectors.
template <typename T>
constexpr int kComputeBytes = 4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16;

// The divergence's categorical forms (divergences.h). float64 kernels call them through one out-of-line
// copy each, shared by passes 2 and 3 (and top-k): double-precision exp/log/log1p are long software sequences,
// and inlined at every site they would take the kernel past ~4k instructions. 32/16-bit kernels inline them.
template <typename Div, typename A>
__device__ __noinline__ A qf_out_of_line(A lq, A lp, A a) {
  return Div::template qf<StdMath>(lq, lp, a);
}
template <typename Div, typename A>
__device__ __noinline__ A qpsi_out_of_line(A lq, A lp, A a) {
  return Div::template qpsi<StdMath>(lq, lp, a);
}
template <typename Div, typename A>
__device__ __forceinline__ A cat_qf(A lq, A lp, A a) {
  if constexpr (sizeof(A) == 8)
    return qf_out_of_line<Div>(lq, lp, a);
  else
    return Div::template qf<StdMath>(lq, lp, a);
}
template <typename Div, typename A>
__device__ __forceinline__ A cat_qpsi(A lq, A lp, A a) {
  if constexpr (sizeof(A) == 8)
    return qpsi_out_of_line<Div>(lq, lp, a);
  else
    return Div::template qpsi<StdMath>(lq, lp, a);
}

// Divergence id of a functor, from the one table of divergences.h.
template <typename Div>
struct DivId;
#define FDIV_DIV_ID(name, id, Functor, ...) \
  template <>                               \
  struct DivId<Functor> {                   \
    static constexpr int value = id;        \
  };
FDIV_DIVERGENCES(FDIV_DIV_ID)
#undef FDIV_DIV_ID

// Online log-sum-exp with ONE exp per value (row_math.h's OnlineLse::add evaluates two): whichever of
// (m, x) is larger becomes m and the other side is scaled by e = exp(-|x - m|). Same state, same merge,
// same NaN rule: a NaN value makes m (and s) NaN, +inf makes the row's LSE +inf (so its log-probs NaN),
// and only -inf so far keeps (-inf, 0). (A candidate for row_math.h, so the CPU could share it.)
template <typename A>
__device__ __forceinline__ void lse_add(OnlineLse<A>& st, A x) {
  const A nm = nan_max(st.m, x);
  const A d = x - st.m;  // +inf while m = -inf, NaN when both are -inf (guarded) or either is NaN
  const A e = fexp(-fabs_(d));
  const A s = d > A(0) ? st.s * e + A(1) : st.s + e;
  st.s = is_neg_inf(nm) ? st.s : s;
  st.m = nm;
}

// Pass 1 of one side: this thread's online LSE of x * sc over the n elements at p.
template <typename T>
__device__ __forceinline__ OnlineLse<acc_t<T>> lse_part(const T* p, int n, acc_t<T> sc) {
  using A = acc_t<T>;
  constexpr int N = Vec16<T>::kN;
  OnlineLse<A> st = cuda::empty_lse<A>();
  vec_loop<N>(
      n, vec_head<T>(p, n), kVectorised<T>, threadIdx.x, kThreads, [&](int j) { lse_add(st, to_acc(p[j]) * sc); },
      [&](int j0) {
        const Vec16<T> x = load_vec(p, j0);
#pragma unroll
        for (int k = 0; k < N; ++k) lse_add(st, to_acc(x.v[k]) * sc);
      });
  return st;
}

// What passes 2 and 3 need to know about a row once its log-sum-exps are known.
template <typename A>
struct RowStats {
  A inv_t, t_scale, param;
  A shift_z, log_sum_z, shift_t, log_sum_t;  // LSE = shift + log_sum (t: 0, 0 for log-probs)
  A shift_1, log_sum_1;                      // the temperature-1 LSE of z (hard term only)
  // (x - shift) - log_sum keeps the low bits that x - LSE would lose at |x| ~ 1e4
  __device__ __forceinline__ A log_q(A zv) const { return (zv * inv_t - shift_z) - log_sum_z; }
  __device__ __forceinline__ A log_p(A tv) const { return (tv * t_scale - shift_t) - log_sum_t; }
};

// The NaN rule (docs/math.md "Numerics", issue 16): a NaN anywhere in a row's inputs, or +inf in its logits or
// cached log-probs, makes that row's loss and its whole gradient NaN, on CPU and CUDA alike, whatever the
// divergence's functor does with NaN (some compare or select it away, e.g. total_variation's psi). Logits
// reach every log-prob through the row's LSE, checked once per row (lse_poisoned); cached teacher log-probs
// are checked per entry in pass 2, where they are read anyway (poisoned), before the -inf drop.
template <typename A>
__device__ __forceinline__ bool poisoned(A lq, A lp) {
  return is_nan(lq) || is_nan(lp) || is_pos_inf(lp);
}
template <typename A>
__device__ __forceinline__ bool lse_poisoned(A shift) {
  return !(shift < cuda::inf<A>());  // NaN or +inf
}

// This thread's pass-2 sums: loss = sum q f, s = sum q psi over the kept entries, bad = poisoned entries.
template <typename A>
struct RowSums {
  A loss, s, bad;
};

// Pass 2 over n common entries at zp, tp; q psi clamped to the finite range with NaN kept (finite_or_nan).
// `vec`: zp and tp are equally misaligned.
template <typename T, typename Div>
__device__ __forceinline__ RowSums<acc_t<T>> sums_part(const T* zp, const T* tp, int n, bool vec,
                                                       const RowStats<acc_t<T>>& rs) {
  using A = acc_t<T>;
  constexpr int B = kComputeBytes<T>, N = Vec<T, B>::kN;
  RowSums<A> acc{A(0), A(0), A(0)};
  auto element = [&](A zv, A tv) {
    const A lq = rs.log_q(zv), lp = rs.log_p(tv);
    const bool drop = is_neg_inf(lq) || is_neg_inf(lp);  // a -inf entry contributes nothing
    const A qf = cat_qf<Div>(lq, lp, rs.param);
    const A qpsi = finite_or_nan(cat_qpsi<Div>(lq, lp, rs.param));
    acc.loss += drop ? A(0) : qf;
    acc.s += drop ? A(0) : qpsi;
    acc.bad += poisoned(lq, lp) ? A(1) : A(0);
  };
  vec_loop<N>(
      n, vec_head<T, B>(zp, n), vec && kVectorised<T>, threadIdx.x, kThreads,
      [&](int j) { element(to_acc(zp[j]), to_acc(tp[j])); },
      [&](int j0) {
        const Vec<T, B> z = load_vec<B>(zp, j0), t = load_vec<B>(tp, j0);
#pragma unroll
        for (int k = 0; k < N; ++k) element(to_acc(z.v[k]), to_acc(t.v[k]));
      });
  return acc;
}

// The gradient's factors: g_j = coef (qpsi_j [kept] - q_j S) + hard_coef (softmax(z)_j - [j = y]).
template <typename A>
struct GradCoefs {
  A coef, s, hard_coef;
  int y;  // -1 without the hard term (hard_coef = 0 then)
};

template <typename A>
__device__ __forceinline__ A hard_part(const RowStats<A>& rs, const GradCoefs<A>& gc, int j, A zv) {
  return gc.y < 0 ? A(0) : gc.hard_coef * (fexp((zv - rs.shift_1) - rs.log_sum_1) - (j == gc.y ? A(1) : A(0)));
}

// Pass 3 over n common entries: element i of the slice is global column j0 + i. Each element is read
// (zp, tp) by the thread that then writes it (gp), so gp may alias zp (in place). `vec`: zp, tp and gp
// are equally misaligned.
template <typename T, typename Div>
__device__ __forceinline__ void grad_part(const T* zp, const T* tp, T* gp, int n, int j_base, bool vec,
                                          const RowStats<acc_t<T>>& rs, const GradCoefs<acc_t<T>>& gc) {
  using A = acc_t<T>;
  constexpr int B = kComputeBytes<T>, N = Vec<T, B>::kN;
  auto element = [&](int j, A zv, A tv) {
    const A lq = rs.log_q(zv), lp = rs.log_p(tv);
    const bool drop = is_neg_inf(lq) || is_neg_inf(lp);
    const A qpsi = finite_or_nan(cat_qpsi<Div>(lq, lp, rs.param));
    return from_acc<T>(gc.coef * ((drop ? A(0) : qpsi) - fexp(lq) * gc.s) + hard_part(rs, gc, j, zv));
  };
  vec_loop<N>(
      n, vec_head<T, B>(zp, n), vec && kVectorised<T>, threadIdx.x, kThreads,
      [&](int j) { gp[j] = element(j_base + j, to_acc(zp[j]), to_acc(tp[j])); },
      [&](int j0) {
        const Vec<T, B> z = load_vec<B>(zp, j0), t = load_vec<B>(tp, j0);
        Vec<T, B> out;
#pragma unroll
        for (int k = 0; k < N; ++k) out.v[k] = element(j_base + j0 + k, to_acc(z.v[k]), to_acc(t.v[k]));
        store_vec(gp, j0, out);
      });
}

// Pass 3 over student entries past the teacher's vocabulary: dropped, only the softmax normalisation.
template <typename T>
__device__ __forceinline__ void grad_student_only(const T* zp, T* gp, int n, int j_base, bool vec,
                                                  const RowStats<acc_t<T>>& rs, const GradCoefs<acc_t<T>>& gc) {
  using A = acc_t<T>;
  constexpr int B = kComputeBytes<T>, N = Vec<T, B>::kN;
  auto element = [&](int j, A zv) {
    return from_acc<T>(-gc.coef * fexp(rs.log_q(zv)) * gc.s + hard_part(rs, gc, j, zv));
  };
  vec_loop<N>(
      n, vec_head<T, B>(zp, n), vec && kVectorised<T>, threadIdx.x, kThreads,
      [&](int j) { gp[j] = element(j_base + j, to_acc(zp[j])); },
      [&](int j0) {
        const Vec<T, B> z = load_vec<B>(zp, j0);
        Vec<T, B> out;
#pragma unroll
        for (int k = 0; k < N; ++k) out.v[k] = element(j_base + j0 + k, to_acc(z.v[k]));
        store_vec(gp, j0, out);
      });
}

// g[0, n) = value (0 for an ignored or empty row, NaN for an invalid label or top-k index).
template <typename T>
__device__ __forceinline__ void fill_row(T* g, int n, acc_t<T> value) {
  constexpr int N = Vec16<T>::kN;
  const T v = from_acc<T>(value);
  vec_loop<N>(
      n, vec_head<T>(g, n), kVectorised<T>, threadIdx.x, kThreads, [&](int j) { g[j] = v; },
      [&](int j0) {
        Vec16<T> out;
#pragma unroll
        for (int k = 0; k < N; ++k) out.v[k] = v;
        store_vec(g, j0, out);
      });
}

}  // namespace fdiv_ops::token_kd
