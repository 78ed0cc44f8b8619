// CPU rows of phases 2 and 3 of vocabulary-parallel f_divergence (the formulas: include/fdiv_ops/vocab_parallel.h).
// Per row of the shard, with the global LSEs from phase 1:
//   phase 2  one pass over the shared columns: q, p (2 exp), q f~ and q psi~ (the divergence's categorical form,
//            divergences.h), summed into the loss and S partials; one pass over each side's one-sided columns
//   phase 3  the same per-entry terms again (nothing rows x V kept between the phases, and the gradient may
//            overwrite the student's logits in place), g_j = scale/T (q psi~_j - q_j S) (+ the hard term)
// Each divergence x dtype gets its own multiversioned (target_clones) function per phase, as the dense kernel's
// pass C does, so every hot loop vectorises at the widest ISA the CPU has; the loop invariants are local copies
// (through references a store to g might alias them, and GCC then leaves the loop scalar), and the hard term is a
// template flag (a select on a loop invariant makes GCC unswitch the loop and leave both copies scalar).
// Row sums: the accumulation type within blocks of 512 entries, float64 across blocks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "fdiv_ops/cpu_clones.h"
#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/vec_math.h"
#include "fdiv_ops/vocab_parallel.h"

namespace fdiv_ops::vp_cpu {

#define FDIV_VP_INLINE __attribute__((always_inline)) inline

using M = VecMath;
constexpr int64_t kBlock = 512;

template <typename T>
FDIV_VP_INLINE acc_t<T> ld(const T* x, int64_t j) {
  return static_cast<acc_t<T>>(cpu::to_float(x[j]));
}

// What every row of one launch shares (built once per launch in api.cpp).
template <typename A>
struct Setup {
  CatParam<A> param;
  CatSeries<A> series;
  A c1;
};

template <typename T, typename Div, typename A = acc_t<T>>
FDIV_VP_INLINE void partial_row(const VpKdArgs& a, const Setup<A>& setup, int64_t r) {
  A* out = static_cast<A*>(a.partial) + r;
  const int64_t plane = a.rows, vs = a.vs, vt = a.vt, vc = std::min(vs, vt);
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const double* lse = a.lse + 3 * r;
  const bool hard = a.labels != nullptr;
  if (vp_row_state<A>(scale, lse[0], lse[1], lse[2]) != 0) {
    out[0] = out[plane] = out[2 * plane] = A(0);
    return;
  }
  const T* z = static_cast<const T*>(a.student) + r * vs;
  const T* t = static_cast<const T*>(a.teacher) + r * vt;
  const VpRow<A> rs = vp_row<A>(a, lse[0], lse[1]);
  const CatParam<A> param = setup.param;
  const CatSeries<A> series = setup.series;
  const A c1 = setup.c1;
  double loss = 0, s = 0;
  for (int64_t b0 = 0; b0 < vc; b0 += kBlock) {
    const int64_t b1 = std::min(vc, b0 + kBlock);
    A bl = 0, bs = 0;
#pragma omp simd reduction(+ : bl, bs)
    for (int64_t j = b0; j < b1; ++j) {
      A q, p, qf, qpsi;
      bool keep;
      vp_entry<Div, M>(ld(z, j), ld(t, j), rs, param, series, c1, &q, &p, &qf, &qpsi, &keep);
      bl += keep ? qf : c1 * (q - p);  // a dropped entry: c1 (dropped q - dropped p)
      bs += qpsi;
    }
    loss += double(bl);
    s += double(bs);
  }
  double tail_q = 0, tail_p = 0;  // one-sided columns: student-only (dropped q), teacher-only (dropped p)
  const A inv_t = rs.inv_t, t_scale = rs.t_scale, lse_z = rs.lse_z, lse_t = rs.lse_t;
  for (int64_t b0 = vc; b0 < std::max(vs, vt); b0 += kBlock) {
    A bq = 0, bp = 0;
#pragma omp simd reduction(+ : bq)
    for (int64_t j = b0; j < std::min(vs, b0 + kBlock); ++j) bq += M::exp(ld(z, j) * inv_t - lse_z);
#pragma omp simd reduction(+ : bp)
    for (int64_t j = b0; j < std::min(vt, b0 + kBlock); ++j) bp += M::exp(ld(t, j) * t_scale - lse_t);
    tail_q += double(bq);
    tail_p += double(bp);
  }
  out[0] = A(loss + double(c1) * (tail_q - tail_p));
  out[plane] = A(s + double(c1) * tail_q);
  const int64_t y = hard ? a.labels[r] : -1;
  out[2 * plane] = (hard && y >= 0 && y < vs) ? ld(z, y) : A(0);
}

// Phase 3's gradient over the shard; kHard adds scale w (softmax(z)_j - [j = y]) (softmax at T = 1).
template <bool kHard, typename T, typename Div, typename A = acc_t<T>>
FDIV_VP_INLINE void grad_cols(const T* z, const T* t, T* g, int64_t vc, int64_t vs, const VpRow<A>& rs_in,
                              const Setup<A>& setup, A coef, A s, A hard_coef, A lse_1, int64_t y) {
  const VpRow<A> rs = rs_in;
  const CatParam<A> param = setup.param;
  const CatSeries<A> series = setup.series;
  const A c1 = setup.c1;
#pragma omp simd
  for (int64_t j = 0; j < vc; ++j) {
    const A zj = ld(z, j);
    A q, p, qf, qpsi;
    bool keep;
    vp_entry<Div, M>(zj, ld(t, j), rs, param, series, c1, &q, &p, &qf, &qpsi, &keep);
    A gj = coef * (qpsi - q * s);
    if constexpr (kHard) gj += hard_coef * (M::exp(zj - lse_1) - (j == y ? A(1) : A(0)));
    g[j] = cpu::from_float<T>(gj);
  }
  const A tail = coef * (c1 - s), inv_t = rs.inv_t, lse_z = rs.lse_z;
#pragma omp simd
  for (int64_t j = vc; j < vs; ++j) {
    const A zj = ld(z, j);
    A gj = M::exp(zj * inv_t - lse_z) * tail;
    if constexpr (kHard) gj += hard_coef * (M::exp(zj - lse_1) - (j == y ? A(1) : A(0)));
    g[j] = cpu::from_float<T>(gj);
  }
}

template <typename T, typename Div, typename A = acc_t<T>>
FDIV_VP_INLINE void grad_row(const VpKdArgs& a, const Setup<A>& setup, int64_t r) {
  const int64_t plane = a.rows, vs = a.vs, vt = a.vt, vc = std::min(vs, vt);
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const double* lse = a.lse + 3 * r;
  const A* tot = static_cast<const A*>(a.totals) + r;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  T* g = static_cast<T*>(a.grad) + r * vs;
  const bool hard = a.labels != nullptr;
  const int state = vp_row_state<A>(scale, lse[0], lse[1], lse[2]);
  if (state != 0) {
    const A fill = state == 2 ? std::numeric_limits<A>::quiet_NaN() : A(0);
    *loss_out = fill;
    const T v = cpu::from_float<T>(fill);
    for (int64_t j = 0; j < vs; ++j) g[j] = v;
    return;
  }
  const T* z = static_cast<const T*>(a.student) + r * vs;
  const T* t = static_cast<const T*>(a.teacher) + r * vt;
  const VpRow<A> rs = vp_row<A>(a, lse[0], lse[1]);
  const A s = finite_or_nan(tot[plane]), coef = scale * rs.inv_t;
  // read before the gradient overwrites the row (in place)
  const double row_loss =
      double(scale) * vp_row_loss(a, double(setup.c1), lse[1], lse[2], double(tot[0]), double(tot[2 * plane]), hard);
  if (hard)
    grad_cols<true, T, Div>(z, t, g, vc, vs, rs, setup, coef, s, scale * A(a.hard_weight), A(lse[2]), a.labels[r]);
  else
    grad_cols<false, T, Div>(z, t, g, vc, vs, rs, setup, coef, s, A(0), A(0), -1);
  *loss_out = A(row_loss);
}

// One translation unit per dtype: `using VpT = float;` then FDIV_VP_TU(f32). Each divergence's phase-2 and
// phase-3 row is its own multiversioned function; kd_tables_<SUFFIX> hands api.cpp the two tables.
template <typename T>
using PartialFn = void (*)(const VpKdArgs&, const Setup<acc_t<T>>&, int64_t);
#define FDIV_VP_ROW_FNS(name, id, Functor, ...)                                                      \
  FDIV_CPU_CLONES void vp_partial_##name(const VpKdArgs& a, const Setup<acc_t<VpT>>& s, int64_t r) { \
    partial_row<VpT, Functor>(a, s, r);                                                              \
  }                                                                                                  \
  FDIV_CPU_CLONES void vp_grad_##name(const VpKdArgs& a, const Setup<acc_t<VpT>>& s, int64_t r) {    \
    grad_row<VpT, Functor>(a, s, r);                                                                 \
  }
#define FDIV_VP_PARTIAL_PTR(name, ...) &vp_partial_##name,
#define FDIV_VP_GRAD_PTR(name, ...) &vp_grad_##name,
#define FDIV_VP_TU(SUFFIX)                                                                           \
  namespace {                                                                                        \
  FDIV_DIVERGENCES(FDIV_VP_ROW_FNS)                                                                  \
  }                                                                                                  \
  void kd_tables_##SUFFIX(const PartialFn<VpT>** partial, const PartialFn<VpT>** grad) {             \
    static const PartialFn<VpT> kPartial[kNumDivergences] = {FDIV_DIVERGENCES(FDIV_VP_PARTIAL_PTR)}; \
    static const PartialFn<VpT> kGrad[kNumDivergences] = {FDIV_DIVERGENCES(FDIV_VP_GRAD_PTR)};       \
    *partial = kPartial;                                                                             \
    *grad = kGrad;                                                                                   \
  }

void kd_tables_f32(const PartialFn<float>** partial, const PartialFn<float>** grad);
void kd_tables_f64(const PartialFn<double>** partial, const PartialFn<double>** grad);
void kd_tables_bf16(const PartialFn<cpu::bf16>** partial, const PartialFn<cpu::bf16>** grad);
void kd_tables_f16(const PartialFn<cpu::f16>** partial, const PartialFn<cpu::f16>** grad);

}  // namespace fdiv_ops::vp_cpu
