// Row numerics shared by the CPU loops and the CUDA kernels: the online log-sum-exp and the NaN-preserving
// helpers. Host-device and torch-free, so the CPU build (which CI runs) tests the very code the GPU runs.
//
// NaN rules (docs/math.md, "Numerics"): a NaN input makes its own row (or sample) NaN and nothing else, on
// CPU and CUDA alike. Every max, clamp and merge here therefore propagates NaN instead of dropping it
// (fmax/fmin and `a > b ? a : b` silently pick the non-NaN side).
//
// The token-level KD rows (f_divergence_loss, dense and top-k) follow one rule: a row whose student logits or
// teacher entries (logits, log-probs or top-k log-probs) hold a NaN or a +inf has loss NaN and every entry of
// its gradient NaN; every other row is unaffected. -inf entries keep their meaning (dropped: no loss, psi 0).
// A row with row_scale 0 (ignored by its label) is never read and gives 0 and 0 whatever it holds. The kernels
// detect it from the row maxima, taken with poison_max (NaN counts as +inf) and tested with row_poisoned.
#pragma once

#include "platform.h"

namespace fdiv_ops {

template <typename A>
FDIV_HD bool is_nan(A x) {
  return x != x;
}

// max(a, b) that returns NaN when either side is NaN.
template <typename A>
FDIV_HD A nan_max(A a, A b) {
  return (a != a || a > b) ? a : b;
}

template <typename A>
FDIV_HD A max_finite();
template <>
FDIV_HD float max_finite<float>() {
  return 3.402823466e38f;
}
template <>
FDIV_HD double max_finite<double>() {
  return 1.7976931348623157e308;
}

template <typename A>
FDIV_HD A machine_eps();
template <>
FDIV_HD float machine_eps<float>() {
  return 1.1920928955078125e-7f;  // 2^-23
}
template <>
FDIV_HD double machine_eps<double>() {
  return 2.220446049250313e-16;  // 2^-52
}

template <typename A>
FDIV_HD A min_normal();
template <>
FDIV_HD float min_normal<float>() {
  return 1.17549435e-38f;
}
template <>
FDIV_HD double min_normal<double>() {
  return 2.2250738585072014e-308;
}

// The running maximum of a row for the NaN rule: a NaN entry counts as +inf, so one max reduction (which
// vectorises and may run in any order) both finds the maximum and flags the row.
template <typename A>
FDIV_HD A poison_max(A running, A x) {
  const A v = x != x ? pos_inf<A>() : x;
  return v > running ? v : running;
}
// Whether a row maximum (from poison_max, or from nan_max) says the row holds a NaN or a +inf.
template <typename A>
FDIV_HD bool row_poisoned(A row_max) {
  return row_max != row_max || is_pos_inf(row_max);
}

// x clamped to the finite range, NaN kept: q psi of pearson/neyman/alpha can overflow to +-inf, and
// inf - inf in a gradient would be NaN; clamped, the gradient saturates instead (the loss itself stays inf).
// A NaN (from a NaN input) must stay NaN, so this is not clamp_ (which maps NaN to the lower bound).
template <typename A>
FDIV_HD A finite_or_nan(A x) {
  const A lo = x < -max_finite<A>() ? -max_finite<A>() : x;
  return lo > max_finite<A>() ? max_finite<A>() : lo;
}

// Online log-sum-exp of a stream of values: LSE = m + log(s), with s rescaled whenever m grows. Only -inf
// so far keeps (m, s) = (-inf, 0); a NaN value makes m NaN, and every merge with it stays NaN.
template <typename A>
struct OnlineLse {
  A m, s;

  static FDIV_HD OnlineLse empty() { return {-pos_inf<A>(), A(0)}; }

  FDIV_HD void add(A x) {
    const A nm = nan_max(m, x);
    if (is_neg_inf(nm)) return;  // nothing but -inf so far
    s = s * fexp(m - nm) + fexp(x - nm);
    m = nm;
  }

  static FDIV_HD OnlineLse merge(const OnlineLse& a, const OnlineLse& b) {
    const A nm = nan_max(a.m, b.m);
    if (is_neg_inf(nm)) return {nm, A(0)};
    return {nm, a.s * fexp(a.m - nm) + b.s * fexp(b.m - nm)};
  }

  // log(sum e^x) - m, 0 for an empty (all -inf) stream.
  FDIV_HD A log_sum() const { return is_neg_inf(m) ? A(0) : flog(s); }
};

}  // namespace fdiv_ops
