// CPU kernel of f_divergence_loss, dense teacher (the formulas: include/fdiv_ops/f_divergence.h; the
// categorical numerics: include/fdiv_ops/divergences.h). One OpenMP thread per block of rows; per row r with
// student logits z (Vs), teacher t (Vt), Vc = min(Vs, Vt), x = z/T, y = t/T (y = t for teacher log-probs):
//
//   pass A  row maxima mz, mt (NaN counted as +inf: a NaN or +inf entry makes the row NaN, row_math.h)
//   pass B  e_q = exp(x - mz), e_p = exp(y - mt), stored in a per-thread scratch row (2 Vs values, in L2),
//           Sz = sum e_q, St = sum e_p (every row sum: float within blocks of 512 entries, float64 across)
//   pass C  q = e_q / Sz, p = e_p / St, l = log(p/q) = (t - z)/T - (LSE(y) - LSE(x)) (from the logits, so a
//           common rounding of the two LSEs shifts every l alike and moves the loss only at second order);
//           loss = sum q f~ and S = sum q psi~ (shifted forms + near-r = 1 polynomials, divergences.h);
//           q psi~ overwrites e_p in the scratch
//   pass D  grad_j = scale/T (q psi~_j - q_j S)  (dropped and student-only entries: q psi~ = c1 q), written once
//   hard term (labels): + w (LSE_1(z) - z_y) in the loss, + scale w (softmax(z)_j - [j=y]) in pass D, with
//           LSE_1 at temperature 1 (one more exp pass over z only when T != 1)
// Transcendentals per element (float32, teacher logits), before -> after this kernel:
//   pass 1/A+B  2 exp (one per side) -> 2 exp; pass 2/C: forward_kl 1 exp -> 0, reverse_kl 1 exp -> 0,
//   js / gkd_jsd 3 exp + 1 log -> 1 exp + 1 log1p; pass 3/D: forward_kl 2 exp -> 0, reverse_kl 1 exp -> 0,
//   js / gkd_jsd 2 exp + 1 log -> 0. Totals: forward_kl 5 -> 2, reverse_kl 4 -> 2, js / gkd_jsd 9 -> 4.
//   (Others in pass C: squared_hellinger 2 sqrt, jeffreys and total_variation 0, softened_rkl and skew_* 1 exp
//   + 1 log1p, pearson/neyman 2 exp, alpha 3 exp.) Teacher log-probs: no teacher max pass, 1 exp per entry.
// Bytes per row: pass A reads z and t (the only DRAM reads), B re-reads them and writes 2 scratch rows, C reads
// z, t and the scratch and rewrites one scratch row, D reads the scratch and writes the gradient (the only
// DRAM write). For fp32 and V = 32000 the row pair and scratch are 512 KB, inside a core's L2.
// In place: grad may alias the student row: passes A-C read all of z before pass D writes, and pass D reads z_j
// (hard term at T != 1) before it writes g_j.
// Every hot loop is `#pragma omp simd`, branch-free, inlined into a target_clones function per dtype (the
// divergence switch picks one of 13 inlined pass-C loops per row, never per element).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fdiv_ops/cpu_clones.h"
#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_divergence.h"
#include "fdiv_ops/row_math.h"
#include "kernels.h"

namespace fdiv_ops::fdiv_cpu {

#define FDIV_INLINE __attribute__((always_inline)) inline

using M = VecMath;
using cpu::to_float;

template <typename A>
constexpr A kInf = std::numeric_limits<A>::infinity();

template <typename T>
FDIV_INLINE acc_t<T> load(const T* x, int64_t j) {
  return static_cast<acc_t<T>>(to_float(x[j]));
}

// Row sums are accumulated in the compute type within blocks of kBlock entries (so the loops vectorise at the
// full float width) and across blocks in float64: a block's rounding is that of ~kBlock/16 terms per lane.
constexpr int64_t kBlock = 512;

// Pass A: the row maximum, NaN counted as +inf (poison_max).
template <typename T, typename A = acc_t<T>>
FDIV_INLINE A row_max(const T* x, int64_t n) {
  A mx = -kInf<A>;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = poison_max(mx, load(x, j));
  return mx;
}

// 2^w in pass B (vec_math.h; libm for float64).
FDIV_INLINE float row_exp2(float w) { return vec::exp2_bounded(w); }
FDIV_INLINE double row_exp2(double w) { return std::exp2(w); }

template <typename A>
constexpr A kLog2e = A(1.44269504088896340735992468100189214);
constexpr double kLn2 = 0.693147180559945309417232121458176568;

// Pass B: out_j = 2^(x_j scale - shift) (<= 1 after the max; scale carries log2 e), and their sum.
template <typename T, typename A = acc_t<T>>
FDIV_INLINE double exp_store(const T* x, int64_t n, A scale, A shift, A* out) {
  double sum = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    A part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t j = b0; j < b1; ++j) {
      const A e = row_exp2(load(x, j) * scale - shift);
      out[j] = e;
      part += e;
    }
    sum += static_cast<double>(part);
  }
  return sum;
}
template <typename T, typename A = acc_t<T>>
FDIV_INLINE double exp_sum(const T* x, int64_t n, A scale, A shift) {
  double sum = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    A part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t j = b0; j < b1; ++j) part += row_exp2(load(x, j) * scale - shift);
    sum += static_cast<double>(part);
  }
  return sum;
}
// Teacher log-probabilities: p_j = exp(t_j) as given (no max, no LSE), the maximum taken alongside for the
// NaN rule. out may be null (entries past the student's vocabulary: summed only).
template <typename T, typename A = acc_t<T>>
FDIV_INLINE double exp_store_logprobs(const T* x, int64_t n, A* out, A* mx_inout) {
  double sum = 0;
  A mx = *mx_inout;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    A part = 0;
    if (out != nullptr) {
#pragma omp simd reduction(+ : part) reduction(max : mx)
      for (int64_t j = b0; j < b1; ++j) {
        const A v = load(x, j), e = row_exp2(v * kLog2e<A>);
        mx = poison_max(mx, v);
        out[j] = e;
        part += e;
      }
    } else {
#pragma omp simd reduction(+ : part) reduction(max : mx)
      for (int64_t j = b0; j < b1; ++j) {
        const A v = load(x, j);
        mx = poison_max(mx, v);
        part += row_exp2(v * kLog2e<A>);
      }
    }
    sum += static_cast<double>(part);
  }
  *mx_inout = mx;
  return sum;
}

template <typename T>
FDIV_INLINE void fill_row(T* g, int64_t n, acc_t<T> value) {
  const T v = cpu::from_float<T>(value);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) g[j] = v;
}

// The row constants of pass C.
template <typename A>
struct RowState {
  A inv_t, t_scale;  // x = z inv_t, y = t t_scale
  A t_mul;           // 1, or T for teacher log-probs: y - x = (t t_mul - z) inv_t either way
  A shift;           // LSE(y) - LSE(x), so l = (y - x) - shift
  A lse_z, lse_t;    // log q = x - lse_z, log p = y - lse_t
  A inv_sz, inv_st;  // q = e_q inv_sz, p = e_p inv_st
  A tol, c1;
};

struct TermSums {
  double loss, s, dropped_q, dropped_p;
};

// Pass C over the shared vocabulary [0, n): sum q f~, sum of the stored q psi~ (c1 q where dropped), and the
// dropped masses; q psi~ replaces e_p in the scratch.
template <typename T, typename Div, typename A = acc_t<T>>
FDIV_INLINE TermSums dense_terms(const T* z, const T* t, int64_t n, const RowState<A>& rs, const CatParam<A>& param_in,
                                 const CatSeries<A>& series_in, const A* eq, A* ep) {
  // Local copies: loop invariants the compiler can keep in registers (through the references, a store to ep
  // might alias them, and some of the 13 loops then stay scalar).
  const CatSeries<A> series = series_in;
  const CatParam<A> param = param_in;
  const A inv_t = rs.inv_t, t_scale = rs.t_scale, shift = rs.shift, lse_z = rs.lse_z, lse_t = rs.lse_t;
  const A inv_sz = rs.inv_sz, inv_st = rs.inv_st, tol = rs.tol, c1 = rs.c1, t_mul = rs.t_mul;
  TermSums out{0, 0, 0, 0};
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    A loss = 0, s = 0, dq = 0, dp = 0;
#pragma omp simd reduction(+ : loss, s, dq, dp)
    for (int64_t j = b0; j < b1; ++j) {
      const A zr = load(z, j), tr = load(t, j);
      const A x = zr * inv_t, y = tr * t_scale;
      const bool keep = (x > -kInf<A>)&(y > -kInf<A>);  // finite: NaN and +inf rows never get here
      // y - x from the logits (t - z exact when they are close); no select on a loop invariant here: GCC
      // unswitches the loop on it and then leaves both copies scalar.
      const A d = (tr * t_mul - zr) * inv_t;
      const A q = eq[j] * inv_sz, p = ep[j] * inv_st;
      const CatPoint<A> e{q, p, keep ? d - shift : A(0), keep ? x - lse_z : A(0), keep ? y - lse_t : A(0), tol};
      A qf, qpsi;
      cat_terms<Div, M>(e, param, series, &qf, &qpsi);
      const A stored = keep ? finite_or_nan(qpsi) : c1 * q;
      ep[j] = stored;
      loss += keep ? qf : A(0);
      s += stored;
      dq += keep ? A(0) : q;
      dp += keep ? A(0) : p;
    }
    out.loss += static_cast<double>(loss);
    out.s += static_cast<double>(s);
    out.dropped_q += static_cast<double>(dq);
    out.dropped_p += static_cast<double>(dp);
  }
  return out;
}

// Pass D. kHard: 0 none, 1 hard term with softmax(z) = q (T = 1), 2 with softmax(z)_j = exp(z_j - lse_1).
template <int kHard, typename T, typename A = acc_t<T>>
FDIV_INLINE void dense_grad(const T* z, T* g, int64_t vc, int64_t vs, const A* eq, const A* ep, A inv_sz, A coef, A s,
                            A c1, A hard_coef, int64_t y, A lse_1) {
#pragma omp simd
  for (int64_t j = 0; j < vc; ++j) {
    const A q = eq[j] * inv_sz;
    A gj = coef * (ep[j] - q * s);
    if constexpr (kHard != 0) {
      const A q1 = kHard == 1 ? q : M::exp(load(z, j) - lse_1);
      gj += hard_coef * (q1 - (j == y ? A(1) : A(0)));
    }
    g[j] = cpu::from_float<T>(gj);
  }
  const A tail = coef * (c1 - s);  // entries past the teacher's vocabulary: dropped, q psi~ = c1 q
#pragma omp simd
  for (int64_t j = vc; j < vs; ++j) {
    const A q = eq[j] * inv_sz;
    A gj = q * tail;
    if constexpr (kHard != 0) {
      const A q1 = kHard == 1 ? q : M::exp(load(z, j) - lse_1);
      gj += hard_coef * (q1 - (j == y ? A(1) : A(0)));
    }
    g[j] = cpu::from_float<T>(gj);
  }
}

template <typename T>
FDIV_INLINE void dense_row(const FDivergenceArgs& a, int64_t r, const DenseSetup<acc_t<T>>& setup, acc_t<T>* eq,
                           acc_t<T>* ep) {
  using A = acc_t<T>;
  const int64_t vs = a.student_vocab, vt = a.teacher_vocab, vc = std::min(vs, vt);
  const T* z = static_cast<const T*>(a.student) + r * vs;
  const T* t = static_cast<const T*>(a.teacher) + r * vt;
  T* g = static_cast<T*>(a.grad) + r * vs;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature);
  const bool logprobs = a.teacher_is_logprobs;
  const A nan = std::numeric_limits<A>::quiet_NaN();
  if (scale == A(0)) {  // ignored row: never read
    *loss_out = A(0);
    fill_row(g, vs, A(0));
    return;
  }
  // Pass A (the teacher's maximum comes with pass B for log-probs).
  const A mz_raw = row_max(z, vs);
  A mt_raw = logprobs ? -kInf<A> : row_max(t, vt);
  const bool hard = a.labels != nullptr;
  const int64_t y = hard ? a.labels[r] : -1;
  if (row_poisoned(mz_raw) || row_poisoned(mt_raw) || (hard && (y < 0 || y >= vs))) {
    *loss_out = nan;  // NaN rule; a label outside [0, Vs): loud NaN rather than a read out of bounds
    fill_row(g, vs, nan);
    return;
  }
  const bool dead = mz_raw == -kInf<A> || (!logprobs && mt_raw == -kInf<A>);
  // Pass B, in base 2: e = 2^(z c2 - m2) = exp(z/T - m2 ln 2), so LSE(z/T) = m2 ln 2 + log Sz.
  const A c2 = inv_t * kLog2e<A>, mz2 = mz_raw * c2;
  double sz_head = 0, sz_tail = 0, st_head = 0, st_tail = 0;
  if (!dead) {
    sz_head = exp_store(z, vc, c2, mz2, eq);
    sz_tail = exp_store(z + vc, vs - vc, c2, mz2, eq + vc);
    if (logprobs) {
      st_head = exp_store_logprobs(t, vc, ep, &mt_raw);
      st_tail = exp_store_logprobs(t + vc, vt - vc, static_cast<A*>(nullptr), &mt_raw);
      if (row_poisoned(mt_raw)) {
        *loss_out = nan;
        fill_row(g, vs, nan);
        return;
      }
    } else {
      st_head = exp_store(t, vc, c2, mt_raw * c2, ep);
      st_tail = exp_sum(t + vc, vt - vc, c2, mt_raw * c2);
    }
  }
  if (dead || mt_raw == -kInf<A>) {  // a row of -inf on either side: 0 and 0, the hard term included
    *loss_out = A(0);
    fill_row(g, vs, A(0));
    return;
  }
  const double sz = sz_head + sz_tail, st = st_head + st_tail;
  const double lse_z = double(mz2) * kLn2 + std::log(sz);
  const double lse_t = logprobs ? 0.0 : double(mt_raw * c2) * kLn2 + std::log(st);
  RowState<A> rs;
  rs.inv_t = inv_t;
  rs.t_scale = logprobs ? A(1) : inv_t;
  rs.t_mul = logprobs ? A(1) / inv_t : A(1);
  rs.shift = A(lse_t - lse_z);
  rs.lse_z = A(lse_z);
  rs.lse_t = A(lse_t);
  rs.inv_sz = A(1.0 / sz);
  rs.inv_st = logprobs ? A(1) : A(1.0 / st);
  rs.tol = cat_dead_zone<A>(A(lse_z), A(lse_t));
  rs.c1 = setup.c1;
  // Pass C, the one divergence-specific loop.
  TermSums sums{};
  switch (setup.spec.kind) {
#define FDIV_PASS_C(name, id, Functor, ...)                                          \
  case Divergence::name:                                                             \
    sums = dense_terms<T, Functor>(z, t, vc, rs, setup.param, setup.series, eq, ep); \
    break;
    FDIV_DIVERGENCES(FDIV_PASS_C)
#undef FDIV_PASS_C
  }
  // The entries past the teacher's vocabulary (student-only) are dropped; those past the student's
  // (teacher-only) drop their teacher mass. loss = sum q f~ + c1 (sum_kept p - sum_kept q), with
  // sum_all q = 1 and sum_all p = 1 exactly (St for log-probs, as given).
  const double q_tail = sz_tail / sz, p_tail = logprobs ? st_tail : st_tail / st;
  const double dropped_q = sums.dropped_q + q_tail, dropped_p = sums.dropped_p + p_tail;
  const double p_excess = logprobs ? st - 1.0 : 0.0;
  const double loss = sums.loss + double(setup.c1) * (p_excess - dropped_p + dropped_q);
  const A s = finite_or_nan(A(sums.s + double(setup.c1) * q_tail));
  // Pass D, with the hard term (cross-entropy at temperature 1) when labels are given.
  const A coef = scale * inv_t;
  double ce = 0;
  if (!hard) {
    dense_grad<0>(z, g, vc, vs, eq, ep, rs.inv_sz, coef, s, setup.c1, A(0), y, A(0));
  } else {
    const A hard_w = A(a.hard_weight);
    double lse_1 = lse_z;
    if (inv_t != A(1)) {
      const A m1 = mz_raw * kLog2e<A>;
      lse_1 = double(m1) * kLn2 + std::log(exp_sum(z, vs, kLog2e<A>, m1));
    }
    ce = lse_1 - double(load(z, y));  // read before pass D overwrites z_y (in place)
    if (inv_t == A(1))
      dense_grad<1>(z, g, vc, vs, eq, ep, rs.inv_sz, coef, s, setup.c1, scale * hard_w, y, A(lse_1));
    else
      dense_grad<2>(z, g, vc, vs, eq, ep, rs.inv_sz, coef, s, setup.c1, scale * hard_w, y, A(lse_1));
    ce *= double(hard_w);
  }
  *loss_out = A(double(scale) * (loss + ce));
}

// One exported, multiversioned entry point per dtype: FDIV_DENSE_ROWS(float, f32) in dense_f32.cpp.
#define FDIV_DENSE_ROWS(T, SUFFIX)                                                                       \
  FDIV_CPU_CLONES void dense_rows_##SUFFIX(const FDivergenceArgs& a, int64_t begin, int64_t end,         \
                                           const DenseSetup<acc_t<T>>& setup, acc_t<T>* scratch) {       \
    for (int64_t r = begin; r < end; ++r) dense_row<T>(a, r, setup, scratch, scratch + a.student_vocab); \
  }

}  // namespace fdiv_ops::fdiv_cpu
