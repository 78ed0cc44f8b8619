// CPU kernel of f_divergence_loss with a top-k teacher (indices, log-probs of k tokens): the divergence
// between the (k+1)-category distributions {the k tokens, one bucket with the rest of each side's mass}.
//   pass B  as dense_row.h's, student side only: block maxima (a NaN or +inf entry: NaN row) and
//           e_q = 2^(z c2 - block max) into a per-thread scratch row; the k teacher values checked for NaN/+inf
//   the k + 1 categories in float64 (k is small): q_i = e_q[idx_i] scale_b, p_i = exp(lp_i); the buckets
//           q_rest = 1 - sum_i q_i and p_rest = 1 - sum_i p_i (clamped at 0); loss, S = sum q psi, psi_rest
//   pass D  grad_j = scale/T q_j (psi_rest - S) for every j, then grad_idx_i = scale/T (q psi_i - q_i S)
// Transcendentals per vocabulary entry: 1 exp2 in pass B (before: 1 exp in pass 1 and 1 more in pass 3), none
// in pass D; the k categories cost O(k) libm calls per row.
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {
namespace {

struct TopkSums {
  double loss, s, psi_rest;
};

// The categorical terms (q f, q psi, unshifted) of the k + 1 categories in float64 (closed forms, StdMath).
// Dropped categories (-inf on either side, or an empty bucket) give 0 and 0.
template <typename Div, typename A>
TopkSums topk_categories(const CatParam<double>& c, int64_t k, const double* q_top, const double* x_top,
                         const double* lp_top, double lse_z, double* qpsi_top) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  // total_variation's dead zone in the precision of the inputs (float for 16/32-bit logits): float64 here
  // would resolve rounding noise of float inputs into a sign.
  const double eps_ratio = double(machine_eps<A>()) / machine_eps<double>();
  auto terms = [&](double q, double p, double lq, double lp, double x, double shift, double* qf, double* qpsi) {
    const CatPoint<double> e{q, p, lp - lq, lq, lp, eps_ratio * cat_dead_zone(x, lp, shift)};
    Div::template cat<StdMath>(e, c, qf, qpsi);
    *qpsi = finite_or_nan(*qpsi);
  };
  double loss = 0, s = 0, q_sum = 0, p_sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    const double p = std::exp(lp_top[i]);
    q_sum += q_top[i];
    p_sum += p;
    qpsi_top[i] = 0;
    if (x_top[i] == neg_inf || lp_top[i] == neg_inf) continue;
    double qf, qpsi;
    terms(q_top[i], p, x_top[i] - lse_z, lp_top[i], x_top[i], -lse_z, &qf, &qpsi);
    loss += qf;
    s += qpsi;
    qpsi_top[i] = qpsi;
  }
  const double q_rest = std::fmax(1.0 - q_sum, 0.0), p_rest = std::fmax(1.0 - p_sum, 0.0);
  double psi_rest = 0;
  if (q_rest > 0 && p_rest > 0) {
    double qf, qpsi;
    terms(q_rest, p_rest, std::log(q_rest), std::log(p_rest), std::log(q_rest), 0.0, &qf, &qpsi);
    loss += qf;
    s += qpsi;
    psi_rest = finite_or_nan(qpsi / q_rest);
  }
  return {loss, finite_or_nan(s), psi_rest};
}

template <typename A>
TopkSums categories(DivergenceSpec spec, int64_t k, const double* q_top, const double* x_top, const double* lp_top,
                    double lse_z, double* qpsi_top) {
  const CatParam<double> c = make_cat_param(spec.param);
  switch (spec.kind) {
#define FDIV_TOPK_CASE(name, id, Functor, ...) \
  case Divergence::name:                       \
    return topk_categories<Functor, A>(c, k, q_top, x_top, lp_top, lse_z, qpsi_top);
    FDIV_DIVERGENCES(FDIV_TOPK_CASE)
#undef FDIV_TOPK_CASE
  }
  throw std::invalid_argument("f_divergence_topk: unknown divergence");
}

template <typename T>
FDIV_INLINE void topk_row(const FDivergenceTopkArgs& a, int64_t r, DivergenceSpec spec, const RowScratch<acc_t<T>>& w,
                          double* buf) {
  using A = acc_t<T>;
  const int64_t v = a.vocab, k = a.k;
  const T* z = static_cast<const T*>(a.student) + r * v;
  const int64_t* idx = a.indices + r * k;
  const A* lp = static_cast<const A*>(a.teacher_logprobs) + r * k;
  T* g = static_cast<T*>(a.grad) + r * v;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature);
  if (scale == A(0)) {
    *loss_out = A(0);
    fill_row(g, v, A(0));
    return;
  }
  A mt = -kInf<A>;
  bool bad_index = false;
  for (int64_t i = 0; i < k; ++i) {
    bad_index |= idx[i] < 0 || idx[i] >= v;
    mt = poison_max(mt, lp[i]);
  }
  const SideExp<A> sz = row_poisoned(mt) || bad_index ? SideExp<A>{true, false, 0, 0, 0, 0, 0, false}
                                                      : side_exp(z, v, v, false, inv_t * kLog2e<A>, true, w.eq, w.bmax,
                                                                 w.bsum, w.btail, w.qscale);
  if (sz.poisoned) {  // NaN rule; an out-of-range index: NaN, never a wild read
    *loss_out = std::numeric_limits<A>::quiet_NaN();
    fill_row(g, v, std::numeric_limits<A>::quiet_NaN());
    return;
  }
  if (sz.dead) {
    *loss_out = A(0);
    fill_row(g, v, A(0));
    return;
  }
  double* q_top = buf;
  double* x_top = buf + k;
  double* lp_top = buf + 2 * k;
  double* qpsi_top = buf + 3 * k;
  for (int64_t i = 0; i < k; ++i) {
    q_top[i] = double(w.eq[idx[i]] * w.qscale[idx[i] / kBlock]);
    x_top[i] = double(load(z, idx[i]) * inv_t);
    lp_top[i] = lp[i];
  }
  const TopkSums sums = categories<A>(spec, k, q_top, x_top, lp_top, sz.lse, qpsi_top);
  const A coef = scale * inv_t;
  const A rest = coef * finite_or_nan(A(sums.psi_rest - sums.s));
  for (int64_t b0 = 0; b0 < v; b0 += kBlock) {
    const int64_t b1 = std::min(v, b0 + kBlock);
    const A qr = w.qscale[b0 / kBlock] * rest;
#pragma omp simd
    for (int64_t j = b0; j < b1; ++j) g[j] = cpu::from_float<T>(w.eq[j] * qr);
  }
  for (int64_t i = 0; i < k; ++i) g[idx[i]] = cpu::from_float<T>(A(double(coef) * (qpsi_top[i] - q_top[i] * sums.s)));
  *loss_out = A(double(scale) * sums.loss);
}

#define FDIV_TOPK_ROWS(T, SUFFIX)                                                                                      \
  FDIV_CPU_CLONES void topk_rows_##SUFFIX(const FDivergenceTopkArgs& a, int64_t begin, int64_t end,                    \
                                          DivergenceSpec spec, void* scratch) {                                        \
    using A = acc_t<T>;                                                                                                \
    const RowScratch<A> w = row_scratch(static_cast<A*>(scratch), a.vocab, num_blocks(a.vocab));                       \
    double* buf = static_cast<double*>(scratch) + (dense_scratch_size(a.vocab, a.vocab) * int64_t(sizeof(A)) + 7) / 8; \
    for (int64_t r = begin; r < end; ++r) topk_row<T>(a, r, spec, w, buf);                                             \
  }
FDIV_TOPK_ROWS(float, f32)
FDIV_TOPK_ROWS(double, f64)
FDIV_TOPK_ROWS(cpu::bf16, bf16)
FDIV_TOPK_ROWS(cpu::f16, f16)
#undef FDIV_TOPK_ROWS

}  // namespace

void topk_rows(const FDivergenceTopkArgs& a, int64_t begin, int64_t end, DivergenceSpec spec, void* scratch) {
  FDIV_DISPATCH_FLOATING(a.dtype, cpu::bf16, cpu::f16, [&] {
    if constexpr (std::is_same_v<scalar_t, float>) topk_rows_f32(a, begin, end, spec, scratch);
    if constexpr (std::is_same_v<scalar_t, double>) topk_rows_f64(a, begin, end, spec, scratch);
    if constexpr (std::is_same_v<scalar_t, cpu::bf16>) topk_rows_bf16(a, begin, end, spec, scratch);
    if constexpr (std::is_same_v<scalar_t, cpu::f16>) topk_rows_f16(a, begin, end, spec, scratch);
  });
}

}  // namespace fdiv_ops::fdiv_cpu
