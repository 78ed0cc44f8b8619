// The per-sample arithmetic of f_distill_loss, shared by the CPU loops and the CUDA kernels (host-device,
// torch-free), so both turn the same sums into the same weights, gradient scales and losses, NaN included.
//
// Everything here runs once per sample (B values), never per element, so it is written in double whatever
// the data's dtype: h = r^30 (alpha(30) at r = 20 is 1e39) and w_b^2 S_b (S_b = 1e46 for inputs near 1e23)
// overflow float32 although the loss and the gradient they produce are ordinary numbers.
//
// Representation passed from the weights step to the main pass (see f_distill.h):
//   h_out[b]   = log h(r_b)                        (never overflows; NaN for a NaN discriminator logit)
//   h_stats    = e^-c [ sum_b h_b, n ]             (summed over the samples whose h is not NaN)
// with c = f_distill_h_log_scale(...), a constant of the divergence and the ratio clip alone, so every
// data-parallel rank picks the same c and an all-reduce (sum) of h_stats stays exact. The main pass only
// needs log(mean h + 1e-6) = logaddexp(log s0 - log s1, log 1e-6): c cancels and never has to be passed on.
#pragma once

#include <cstdint>

#include "divergences.h"
#include "row_math.h"

namespace fdiv_ops {

constexpr double kFDistillHEps = 1e-6;  // h_b / (mean h + 1e-6), FastGen's guard

// clamp(x, lo, hi) that keeps NaN (clamp_ maps NaN to lo: a broken discriminator would pass unnoticed).
template <typename A>
FDIV_HD A clamp_keep_nan(A x, A lo, A hi) {
  const A y = nan_max(x, lo);
  return (y != y || y < hi) ? y : hi;
}

// log(e^a + e^b) that keeps NaN; -inf on both sides is -inf.
FDIV_HD double log_add_exp_keep_nan(double a, double b) {
  const double hi = nan_max(a, b), lo = (a != a || a > b) ? b : a;
  if (hi != hi || is_neg_inf(hi)) return hi;
  return hi + flog1p(fexp(lo - hi));
}

// log h(r) from log r, in double: finite while h(r) fits a double (|alpha log r| < 709 for alpha).
FDIV_HD double f_distill_log_h(DivergenceSpec d, double log_r) { return flog(div_h(d.kind, log_r, d.param)); }

// c of the representation above: 0 while h over the clipped ratio range stays below e^40 (every divergence
// with the default clip but extreme alphas), so the stats are then plainly [sum h, n]; otherwise the largest
// h over the clip range is brought down to e^40, leaving room to sum many samples. Capped so that
// n e^-c stays a normal number of the accumulation dtype A (float32: e^-70 = 4e-31).
template <typename A>
FDIV_HD double f_distill_h_log_scale(DivergenceSpec d, double ratio_lo, double ratio_hi) {
  const double top = nan_max(f_distill_log_h(d, flog(ratio_lo)), f_distill_log_h(d, flog(ratio_hi)));
  const double headroom = sizeof(A) == 4 ? 40.0 : 300.0, cap = sizeof(A) == 4 ? 70.0 : 600.0;
  if (top != top) return 0.0;
  const double c = top - headroom;
  return c < 0.0 ? 0.0 : (c > cap ? cap : c);
}

// log(mean h + 1e-6) from the (possibly all-reduced) stats; 0 when h is not normalised (stats null).
template <typename A>
FDIV_HD double f_distill_log_denominator(const A* stats) {
  if (!stats) return 0.0;
  const double log_mean = flog(double(stats[0])) - flog(double(stats[1]));
  return log_add_exp_keep_nan(log_mean, flog(kFDistillHEps));
}

// What the main pass derives for one sample from its sums.
template <typename A>
struct FDistillSample {
  A grad_scale;   // scale * w_b: the gradient is grad_scale * (fake - teacher)
  A normalizer;   // n_b = mean |x - teacher|
  A weight;       // h_b / (mean h + 1e-6), or h_b when not normalised, or 1 without h
  A sample_loss;  // 0.5 * scale * w_b^2 * ||fake - teacher||^2
};

// abs_sum = sum |x - teacher|, diff_norm = ||fake - teacher|| (both in double, so neither overflowed),
// log_h = log h_b (or null: h = 1), log_den from f_distill_log_denominator.
// w_b = weight / (n_b + eps); the loss is formed as (w_b ||d|| sqrt(scale / 2))^2 so that no intermediate
// overflows where the result is finite. A NaN anywhere stays NaN: n_b, w_b and the loss of this sample only.
template <typename A>
FDIV_HD FDistillSample<A> f_distill_sample(double abs_sum, double diff_norm, const A* log_h, int64_t b, double log_den,
                                           int64_t dim, double eps, double scale) {
  const double n_b = abs_sum / double(dim);
  const double weight = log_h ? fexp(double(log_h[b]) - log_den) : 1.0;
  const double w = weight / (n_b + eps);
  const double root = w * diff_norm * fsqrt(0.5 * scale);
  return {A(scale * w), A(n_b), A(weight), A(root * root)};
}

}  // namespace fdiv_ops
