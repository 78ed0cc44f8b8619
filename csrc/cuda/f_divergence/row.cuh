// The pieces of one token-KD row shared by the streaming and the cluster kernels of f_divergence_loss
// (formulas: include/fdiv_ops/f_divergence.h; categorical numerics: include/fdiv_ops/divergences.h, the same
// as the CPU kernel's, cpu/f_divergence/dense_row.h). Each piece is block-strided over a slice of a row that
// lives either in global memory (streaming kernel) or in shared memory (cluster kernel), through the one
// 16-byte-vector loop of cuda_utils.cuh; Div is one functor of divergences.h, fixed per kernel, so no switch
// sits in any element loop.
//
// Per common entry (as dense_row.h's pass C): q = exp(log q), p = exp(log p), l = log(p/q) from the logits'
// difference, (t t_mul - z)/T - (LSE(y) - LSE(x)) (t - z exact when they are close), and total_variation's dead
// zone from x = z/T, y = t/T; then cat_terms: the shifted ("Bregman") q f~ and q psi~, with the near-r = 1
// polynomials (fitted on the host once per launch, CatConsts) for float32. A dropped entry (-inf on either
// side) adds no loss and stores q psi~ = c1 q; the dropped masses (and the student-only / teacher-only tails)
// give the loss its c1 (P_kept - Q_kept) term, so the row loss is sum q f~ plus that, with no cancellation.
//
// Transcendentals per element (StdMath: CUDA's expf/logf/log1pf/expm1f, full precision):
//   pass 1   one exp per side (the online log-sum-exp, lse_add below); the teacher side is skipped when
//            teacher_is_logprobs; a third side (z at temperature 1) only for the hard term with T != 1
//   pass 2   exp(log q) + exp(log p) + Div::cat's own (forward_kl, reverse_kl, jeffreys 0; js, gkd_jsd,
//            softened_rkl, skew_* 1 exp + 1 log1p; total_variation 1 expm1; squared_hellinger 2 sqrt;
//            pearson/neyman 1 expm1 + 1 exp; alpha 2 expm1 + 1 exp); the polynomials cost none
//   pass 3   the same as pass 2 (only q psi~ is kept) (+ 1 exp for the hard term at T != 1)
//   before   pass 2 forward_kl 1 exp, js 4; pass 3 forward_kl 2, js 4 (unshifted qf / qpsi from log-probs)
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

// The launch's categorical constants (divergences.h), resolved on the host once per launch (make_cat_consts)
// and passed in the kernel parameters: the parameter with its logs, c1 = f'(1), and the near-r = 1
// polynomials (tau = 0, i.e. none, for float64, as on the CPU).
template <typename A>
struct CatConsts {
  CatParam<A> param;
  CatSeries<A> series;
  A c1;
};

// q f and q psi of one entry: shifted with the near polynomials (cat_terms, dense rows) or plain (Div::cat,
// the top-k categories, as the CPU's topk.cpp).
template <typename Div, bool kShifted, typename A>
__device__ __forceinline__ void cat_eval(const CatPoint<A>& e, const CatParam<A>& c, const CatSeries<A>& s, A* qf,
                                         A* qpsi) {
  if constexpr (kShifted)
    cat_terms<Div, StdMath>(e, c, s, qf, qpsi);
  else
    Div::template cat<StdMath>(e, c, qf, qpsi);
}

// float64 kernels call the categorical forms through out-of-line copies (one per result and form), shared by
// every site of a kernel: double-precision exp/log/log1p are long software sequences, and inlined at every site
// they would take the kernel past ~4k instructions. Scalars in, a scalar out (no aggregate crosses the call,
// so nothing goes through local memory). float64 has no near polynomials (tau = 0): the zero series folds
// away. 32/16-bit kernels inline everything.
template <typename Div, bool kShifted, bool kPsi>
__device__ __noinline__ double cat_f64(double q, double p, double l, double lq, double lp, double tol, double a,
                                       double log_a, double log1m_a) {
  const CatPoint<double> e{q, p, l, lq, lp, tol};
  double qf, qpsi;
  cat_eval<Div, kShifted>(e, CatParam<double>{a, log_a, log1m_a}, CatSeries<double>{}, &qf, &qpsi);
  return kPsi ? qpsi : qf;
}
template <typename Div, bool kShifted, bool kPsi, typename A>
__device__ __forceinline__ A cat_one(const CatPoint<A>& e, const CatParam<A>& c, const CatSeries<A>& s) {
  if constexpr (sizeof(A) == 8) {
    return cat_f64<Div, kShifted, kPsi>(e.q, e.p, e.l, e.lq, e.lp, e.tol, c.a, c.log_a, c.log1m_a);
  } else {
    A qf, qpsi;
    cat_eval<Div, kShifted>(e, c, s, &qf, &qpsi);
    return kPsi ? qpsi : qf;
  }
}
// exp in the element code of passes 2 and 3: for float64 one out-of-line copy shared by every site (q and p of
// each entry, the tails, the hard term), for the same reason as cat_f64.
template <int = 0>
__device__ __noinline__ double exp_f64(double x) {
  return fexp(x);
}
template <typename A>
__device__ __forceinline__ A row_exp(A x) {
  if constexpr (sizeof(A) == 8)
    return exp_f64(x);
  else
    return fexp(x);
}

// Both results (pass 2, the top-k categories): one inlined evaluation, or two calls for float64.
template <typename Div, bool kShifted, typename A>
__device__ __forceinline__ void cat_both(const CatPoint<A>& e, const CatParam<A>& c, const CatSeries<A>& s, A* qf,
                                         A* qpsi) {
  if constexpr (sizeof(A) == 8) {
    *qf = cat_one<Div, kShifted, false>(e, c, s);
    *qpsi = cat_one<Div, kShifted, true>(e, c, s);
  } else {
    cat_eval<Div, kShifted>(e, c, s, qf, qpsi);
  }
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
  A inv_t, t_scale, t_mul;                   // x = z inv_t, y = t t_scale; y - x = (t t_mul - z) inv_t
  A shift_z, log_sum_z, shift_t, log_sum_t;  // LSE = shift + log_sum (t: 0, 0 for log-probs)
  A lse_shift;                               // LSE(y) - LSE(x): l = (y - x) - lse_shift
  bool logprobs;
  // (x - shift) - log_sum keeps the low bits that x - LSE would lose at |x| ~ 1e4
  __device__ __forceinline__ A log_q(A zv) const { return (zv * inv_t - shift_z) - log_sum_z; }
  __device__ __forceinline__ A log_p(A tv) const { return (tv * t_scale - shift_t) - log_sum_t; }
};

// One common entry as the categorical forms take it (dense_row.h's pass C): q and p from the log-probs, l from
// the logits' difference less the row's LSE difference, and total_variation's dead zone (cat_dead_zone). A
// dropped entry (keep false) gets l = lq = lp = 0 (its terms are not used; q and p are).
template <typename A>
__device__ __forceinline__ CatPoint<A> cat_point(const RowStats<A>& rs, A zv, A tv, A lq, A lp, bool keep) {
  const A x = zv * rs.inv_t, y = tv * rs.t_scale, d = (tv * rs.t_mul - zv) * rs.inv_t;
  return {row_exp(lq),      row_exp(lp),      keep ? d - rs.lse_shift : A(0),
          keep ? lq : A(0), keep ? lp : A(0), cat_dead_zone(x, y, rs.lse_shift)};
}

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

// This thread's pass-2 sums (dense_row.h's TermSums): loss = sum q f~ over the kept entries; s = sum of the
// stored q psi~ (c1 q where dropped, student-only entries included); m = the masses of the loss's c1 term,
// P_kept - Q_kept = m - [log-probs]: for teacher logits (P = Q = 1) the dropped q mass less the dropped p mass
// (student-only and teacher-only entries included), exact 0 when nothing is dropped; for cached log-probs
// (whose total is not 1 exactly) the kept p mass plus the dropped q mass; bad = poisoned entries; kept = kept
// entries (none, with cached log-probs: a teacher row of -inf, 0 and 0 as on the CPU).
// Row loss = loss + c1 (m - [log-probs]) = sum q f~ + c1 (P_kept - Q_kept).
template <typename A>
struct RowSums {
  A loss, s, m, bad, kept;
};
constexpr int kRowSums = 5;

// Pass 2 over n common entries at zp, tp; q psi~ clamped to the finite range with NaN kept (finite_or_nan).
// `vec`: zp and tp are equally misaligned.
template <typename T, typename Div>
__device__ __forceinline__ RowSums<acc_t<T>> sums_part(const T* zp, const T* tp, int n, bool vec,
                                                       const RowStats<acc_t<T>>& rs, const CatConsts<acc_t<T>>& cc) {
  using A = acc_t<T>;
  constexpr int B = kComputeBytes<T>, N = Vec<T, B>::kN;
  RowSums<A> acc{A(0), A(0), A(0), A(0), A(0)};
  auto element = [&](A zv, A tv) {
    const A lq = rs.log_q(zv), lp = rs.log_p(tv);
    const bool keep = !is_neg_inf(lq) && !is_neg_inf(lp);  // a -inf entry is dropped
    const CatPoint<A> e = cat_point(rs, zv, tv, lq, lp, keep);
    A qf, qpsi;
    cat_both<Div, true>(e, cc.param, cc.series, &qf, &qpsi);
    acc.loss += keep ? qf : A(0);
    acc.s += keep ? finite_or_nan(qpsi) : cc.c1 * e.q;
    acc.m += keep ? (rs.logprobs ? e.p : A(0)) : (rs.logprobs ? e.q : e.q - e.p);
    acc.bad += poisoned(lq, lp) ? A(1) : A(0);
    acc.kept += keep ? A(1) : A(0);
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

// Pass 2 past the common columns: this thread's share of sum exp((v sc - shift) - log_sum) over n entries, the
// q mass of the student-only entries or the p mass of the teacher-only ones (both dropped).
template <typename T>
__device__ __forceinline__ acc_t<T> mass_part(const T* p, int n, acc_t<T> sc, acc_t<T> shift, acc_t<T> log_sum) {
  using A = acc_t<T>;
  constexpr int N = Vec16<T>::kN;
  A sum = A(0);
  auto prob = [&](A v) { return row_exp((v * sc - shift) - log_sum); };
  vec_loop<N>(
      n, vec_head<T>(p, n), kVectorised<T>, threadIdx.x, kThreads, [&](int j) { sum += prob(to_acc(p[j])); },
      [&](int j0) {
        const Vec16<T> x = load_vec(p, j0);
#pragma unroll
        for (int k = 0; k < N; ++k) sum += prob(to_acc(x.v[k]));
      });
  return sum;
}

// Both tails of pass 2 (one loop, one copy of its code): side 0 the student-only entries zp[0, nz) (their q
// mass joins m, and c1 q joins s), side 1 the teacher-only entries tp[0, nt) (their p mass leaves m; teacher
// logits only: with cached log-probs m counts the kept p mass, which has none of them).
template <typename T>
__device__ __forceinline__ void tails_part(const T* zp, int nz, const T* tp, int nt, const RowStats<acc_t<T>>& rs,
                                           acc_t<T> c1, RowSums<acc_t<T>>& acc) {
  using A = acc_t<T>;
#pragma unroll 1
  for (int side = 0; side < 2; ++side) {
    const bool s0 = side == 0;
    const A m = mass_part(s0 ? zp : tp, s0 ? nz : (rs.logprobs ? 0 : nt), s0 ? rs.inv_t : rs.t_scale,
                          s0 ? rs.shift_z : rs.shift_t, s0 ? rs.log_sum_z : rs.log_sum_t);
    acc.m += s0 ? m : -m;
    acc.s += s0 ? c1 * m : A(0);
  }
}

// The gradient's factors: g_j = coef (q psi~_j [c1 q_j where dropped] - q_j S) + hard_coef (softmax(z)_j - [j = y]),
// S = sum of the stored q psi~ (RowSums::s).
template <typename A>
struct GradCoefs {
  A coef, s, hard_coef;
  int y;                 // -1 without the hard term (hard_coef = 0 then)
  A shift_1, log_sum_1;  // the temperature-1 LSE of z (hard term only; not in RowStats: fewer registers in pass 2)
};

template <typename A>
__device__ __forceinline__ A hard_part(const GradCoefs<A>& gc, int j, A zv) {
  return gc.y < 0 ? A(0) : gc.hard_coef * (row_exp((zv - gc.shift_1) - gc.log_sum_1) - (j == gc.y ? A(1) : A(0)));
}

// Pass 3 over n common entries: element i of the slice is global column j0 + i. Each element is read
// (zp, tp) by the thread that then writes it (gp), so gp may alias zp (in place). `vec`: zp, tp and gp
// are equally misaligned.
template <typename T, typename Div>
__device__ __forceinline__ void grad_part(const T* zp, const T* tp, T* gp, int n, int j_base, bool vec,
                                          const RowStats<acc_t<T>>& rs, const CatConsts<acc_t<T>>& cc,
                                          const GradCoefs<acc_t<T>>& gc) {
  using A = acc_t<T>;
  constexpr int B = kComputeBytes<T>, N = Vec<T, B>::kN;
  auto element = [&](int j, A zv, A tv) {
    const A lq = rs.log_q(zv), lp = rs.log_p(tv);
    const bool keep = !is_neg_inf(lq) && !is_neg_inf(lp);
    const CatPoint<A> e = cat_point(rs, zv, tv, lq, lp, keep);
    const A stored = keep ? finite_or_nan(cat_one<Div, true, true>(e, cc.param, cc.series)) : cc.c1 * e.q;
    return from_acc<T>(gc.coef * (stored - e.q * gc.s) + hard_part(gc, j, zv));
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

// Pass 3 over student entries past the teacher's vocabulary: dropped, q psi~ = c1 q.
template <typename T>
__device__ __forceinline__ void grad_student_only(const T* zp, T* gp, int n, int j_base, bool vec,
                                                  const RowStats<acc_t<T>>& rs, acc_t<T> c1,
                                                  const GradCoefs<acc_t<T>>& gc) {
  using A = acc_t<T>;
  constexpr int B = kComputeBytes<T>, N = Vec<T, B>::kN;
  const A f = gc.coef * (c1 - gc.s);
  auto element = [&](int j, A zv) { return from_acc<T>(f * row_exp(rs.log_q(zv)) + hard_part(gc, j, zv)); };
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
