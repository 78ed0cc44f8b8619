// The f-divergences of fdiv-ops, once, for the CPU loops and the CUDA kernels alike.
//
// Convention (docs/math.md §1): p is the target, q the model, r = p/q, and every function here takes the
// log-ratio l = log r, never r itself, so that no exp overflows before the algebra is done.
//   f(r)             the generator, convex, f(1) = 0;  D_f(p||q) = E_q[f(r)]
//   psi(r) = f - r f' the gradient of D_f with respect to the model's own probability
//   h(r) = r^2 f''    = -d psi / d l, the f-distill weighting
// Each functor returns the mathematical limit at l = -inf (r -> 0) and l = +inf (r -> inf), so -inf
// log-probabilities give numbers, not NaN. The parameter `a` is beta (gkd_jsd), alpha (alpha) or
// lambda (skew_*) and is ignored by the others; Python validates it before it reaches here.
//
// Categorical forms (token-level distillation, docs/math.md §3): qf(lq, lp) = q f(p/q) and
// qpsi(lq, lp) = q psi(p/q), from the log-probabilities lq = log q, lp = log p (both <= 0). Computing
// exp(lq) * f(l) overflows (forward_kl at l = 100 in fp32 is inf * 0), so each is rewritten so that
// only exp of quantities <= 0 appears wherever the divergence is bounded: e.g. q f = p l for
// forward_kl, p (lp - lm) + q (lq - lm) for js with lm = log((p+q)/2). pearson_chi2, neyman_chi2 and
// alpha (alpha > 1 or < 0) are genuinely unbounded when one side is ~0; there they return inf, never
// NaN. Callers pass finite lq and lp only (an entry that is -inf on either side contributes nothing).
// M is the math policy (vec_math.h): VecMath in the CPU hot loops, StdMath on CUDA and for doubles.
#pragma once

#include "platform.h"
#include "vec_math.h"

namespace fdiv_ops {

template <typename T>
struct Ln2 {
  static constexpr T value = T(0.6931471805599453094172321214581766);
};

// log(e^a + e^b) with the policy M's exp/log1p; select-only, so it vectorises. -inf on both sides is -inf.
template <typename M, typename T>
FDIV_HD T cat_lae(T a, T b) {
  const T hi = a > b ? a : b, lo = a > b ? b : a;
  const T v = hi + M::log1p(M::exp(lo - hi));
  return is_neg_inf(hi) ? hi : v;
}

struct ForwardKL {  // f = r log r
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool, double* up, double*) { *up = 1; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    return is_neg_inf(l) ? T(0) : fexp(l) * l;
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return -fexp(l);
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return fexp(l);
  }
  // q f = p l, q psi = -p
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    return M::exp(lp) * (lp - lq);
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T, T lp, T) {
    return -M::exp(lp);
  }
};

struct ReverseKL {  // f = -log r
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool, double*, double*) {}
  template <typename T>
  static FDIV_HD T f(T l, T) {
    return -l;
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return T(1) - l;
  }
  template <typename T>
  static FDIV_HD T h(T, T) {
    return T(1);
  }
  // q f = q (lq - lp), q psi = q (1 - l)
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    return M::exp(lq) * (lq - lp);
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    return M::exp(lq) * (T(1) + lq - lp);
  }
};

struct JS {  // f = r log r - (r+1) log((r+1)/2);  L = log((1+r)/2) = softplus(l) - log 2
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool of_f, double* up, double*) { *up = of_f ? 1 : 0; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    if (is_pos_inf(l)) return pos_inf<T>();
    T L = softplus(l) - Ln2<T>::value;
    return mul0(fexp(l), Ln2<T>::value - softplus(-l)) - L;  // r (l - L) - L
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return Ln2<T>::value - softplus(l);
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return sigmoid(l);
  }
  // lm = log((p+q)/2): q f = p (lp - lm) + q (lq - lm) (KL(p||m) + KL(q||m) per entry), q psi = q (lq - lm)
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    const T lm = cat_lae<M>(lp, lq) - Ln2<T>::value;
    return M::exp(lp) * (lp - lm) + M::exp(lq) * (lq - lm);
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    return M::exp(lq) * (lq - (cat_lae<M>(lp, lq) - Ln2<T>::value));
  }
};

// beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q; M = m/q. TRL's endpoints: beta = 0 is
// forward_kl and beta = 1 is reverse_kl (the formula itself tends to 0 there).
struct GkdJsd {
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double b, bool of_f, double* up, double*) { *up = (b == 0 || (of_f && b < 1)) ? 1 : 0; }
  template <typename T>
  static FDIV_HD T log_m(T l, T b) {
    return log_add_exp(flog(b) + l, flog(T(1) - b));
  }
  template <typename T>
  static FDIV_HD T f(T l, T b) {
    if (b == T(0)) return ForwardKL::f(l, b);
    if (b == T(1)) return ReverseKL::f(l, b);
    if (is_pos_inf(l)) return pos_inf<T>();
    T l_minus_logm = -log_add_exp(flog(b), flog(T(1) - b) - l);
    return b * mul0(fexp(l), l_minus_logm) - (T(1) - b) * log_m(l, b);
  }
  template <typename T>
  static FDIV_HD T psi(T l, T b) {
    if (b == T(0)) return ForwardKL::psi(l, b);
    if (b == T(1)) return ReverseKL::psi(l, b);
    return -(T(1) - b) * log_m(l, b);
  }
  template <typename T>
  static FDIV_HD T h(T l, T b) {
    if (b == T(0)) return ForwardKL::h(l, b);
    if (b == T(1)) return ReverseKL::h(l, b);
    return b * (T(1) - b) * fexp(-log_add_exp(flog(b), flog(T(1) - b) - l));  // b(1-b) r/M
  }
  // lm = log(b p + (1-b) q): q f = b p (lp - lm) + (1-b) q (lq - lm), q psi = (1-b) q (lq - lm)
  template <typename M, typename T>
  static FDIV_HD T cat_log_m(T lq, T lp, T b) {
    return cat_lae<M>(flog(b) + lp, flog1p(-b) + lq);  // libm on the constant: hoisted out of loops
  }
  // Categorical forms for 0 < b < 1 only (branch-free, so hot loops vectorise): the endpoints are
  // mapped to forward_kl / reverse_kl by canonical_spec before any loop (div_qf does it too).
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T b) {
    const T lm = cat_log_m<M>(lq, lp, b);
    return b * M::exp(lp) * (lp - lm) + (T(1) - b) * M::exp(lq) * (lq - lm);
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T b) {
    return (T(1) - b) * M::exp(lq) * (lq - cat_log_m<M>(lq, lp, b));
  }
};

struct SquaredHellinger {  // f = 1 - sqrt(r)
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool, double* up, double*) { *up = 0.5; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    return T(1) - fexp(T(0.5) * l);
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return T(1) - T(0.5) * fexp(T(0.5) * l);
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return T(0.25) * fexp(T(0.5) * l);
  }
  // q f = q - sqrt(p q), q psi = q - sqrt(p q) / 2
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    return M::exp(lq) - M::exp(T(0.5) * (lp + lq));
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    return M::exp(lq) - T(0.5) * M::exp(T(0.5) * (lp + lq));
  }
};

struct SoftenedRKL {  // f = (r+1) log((r+1)/(2r)); log((1+r)/(2r)) = softplus(-l) - log 2
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool of_f, double* up, double*) { *up = of_f ? 1 : 0; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    return (fexp(l) + T(1)) * (softplus(-l) - Ln2<T>::value);
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return softplus(-l) - Ln2<T>::value + T(1);
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return sigmoid(-l);
  }
  // lm = log((p+q)/2): q f = 2 m (lm - lp), q psi = q (lm - lp + 1)
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    const T lm = cat_lae<M>(lp, lq) - Ln2<T>::value;
    return T(2) * M::exp(lm) * (lm - lp);
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    return M::exp(lq) * (cat_lae<M>(lp, lq) - Ln2<T>::value - lp + T(1));
  }
};

struct Jeffreys {  // f = (r-1) log r
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool, double* up, double*) { *up = 1; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    return fexpm1(l) * l;
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return -fexpm1(l) - l;
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return fexp(l) + T(1);
  }
  // q f = (p - q)(lp - lq), q psi = (q - p) - q (lp - lq)
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    return (M::exp(lp) - M::exp(lq)) * (lp - lq);
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    const T q = M::exp(lq);
    return (q - M::exp(lp)) - q * (lp - lq);
  }
};

struct TotalVariation {  // f = |r-1|/2; psi = -sign(r-1)/2 with sign(0) = 0, so p == q gives 0
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool of_f, double* up, double*) { *up = of_f ? 1 : 0; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    return T(0.5) * fabs_(fexpm1(l));
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return l > T(0) ? T(-0.5) : (l < T(0) ? T(0.5) : T(0));
  }
  template <typename T>
  static FDIV_HD T h(T, T) {
    return T(0);
  }
  // q f = |p - q| / 2, q psi = -q sign(p - q) / 2 (0 when p == q)
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    return T(0.5) * fabs_(M::exp(lp) - M::exp(lq));
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    const T q = M::exp(lq);
    return lp > lq ? T(-0.5) * q : (lp < lq ? T(0.5) * q : T(0));
  }
};

struct PearsonChi2 {  // f = (r-1)^2
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool, double* up, double*) { *up = 2; }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    T e = fexpm1(l);
    return e * e;
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return -fexpm1(T(2) * l);
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return T(2) * fexp(T(2) * l);
  }
  // q f = q expm1(l)^2 = p r - 2p + q; q psi = q - p r = -q expm1(2l). p r = exp(lp + l) is unbounded:
  // the expm1 form (exact near r = 1) is used while it cannot overflow, the exp form beyond.
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    const T l = lp - lq, e = M::expm1(l);
    const T near = M::exp(lq) * e * e;
    const T far = M::exp(lp + l) - T(2) * M::exp(lp) + M::exp(lq);
    return l <= T(20) ? near : far;
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    const T l = lp - lq;
    const T near = -M::exp(lq) * M::expm1(T(2) * l);
    const T far = M::exp(lq) - M::exp(lp + l);
    return l <= T(20) ? near : far;
  }
};

struct NeymanChi2 {  // f = (1-r)^2 / r = 4 sinh(l/2)^2
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool of_f, double* up, double* down) {
    *down = 1;
    *up = of_f ? 1 : 0;
  }
  template <typename T>
  static FDIV_HD T f(T l, T) {
    T s = fsinh(T(0.5) * l);
    return T(4) * s * s;
  }
  template <typename T>
  static FDIV_HD T psi(T l, T) {
    return T(2) * fexpm1(-l);
  }
  template <typename T>
  static FDIV_HD T h(T l, T) {
    return T(2) * fexp(-l);
  }
  // The mirror of pearson_chi2 with k = lq - lp = -l: q f = p expm1(k)^2, q psi = 2 q expm1(k).
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T) {
    const T k = lq - lp, e = M::expm1(k);
    const T near = M::exp(lp) * e * e;
    const T far = M::exp(lq + k) - T(2) * M::exp(lq) + M::exp(lp);
    return k <= T(20) ? near : far;
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T) {
    const T k = lq - lp;
    const T near = T(2) * M::exp(lq) * M::expm1(k);
    const T far = T(2) * (M::exp(lq + k) - M::exp(lq));
    return k <= T(20) ? near : far;
  }
};

struct Alpha {  // f = (r^a - a r - (1-a)) / (a(a-1)),  a not in {0, 1}
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double a, bool of_f, double* up, double* down) {
    if (a > 0) {
      *up = of_f ? (a > 1 ? a : 1) : a;
    } else {
      *down = -a;
      *up = of_f ? 1 : 0;
    }
  }
  template <typename T>
  static FDIV_HD T f(T l, T a) {
    if (is_pos_inf(l)) return pos_inf<T>();
    return (fexpm1(a * l) - a * fexpm1(l)) / (a * (a - T(1)));
  }
  template <typename T>
  static FDIV_HD T psi(T l, T a) {
    return -fexpm1(a * l) / a;
  }
  template <typename T>
  static FDIV_HD T h(T l, T a) {
    return fexp(a * l);
  }
  // q f = q (expm1(a l) - a expm1(l)) / (a(a-1)) = (p^a q^(1-a) - a p - (1-a) q) / (a(a-1));
  // q psi = -q expm1(a l) / a = (q - p^a q^(1-a)) / a. expm1 forms near r = 1, exp forms far from it.
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T a) {
    const T l = lp - lq, q = M::exp(lq);
    const T near = q * (M::expm1(a * l) - a * M::expm1(l)) / (a * (a - T(1)));
    const T far = (M::exp(lq + a * l) - a * M::exp(lp) - (T(1) - a) * q) / (a * (a - T(1)));
    return (l <= T(20) && l >= T(-20) && a * l <= T(20)) ? near : far;
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T a) {
    const T l = lp - lq, q = M::exp(lq);
    const T near = -q * M::expm1(a * l) / a;
    const T far = (q - M::exp(lq + a * l)) / a;
    return a * l <= T(20) ? near : far;
  }
};

// DistiLLM SKL: KL(p || lam p + (1-lam) q);  M = lam r + 1 - lam. lam = 0 is forward_kl, lam = 1 is 0.
struct SkewForwardKL {
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double lam, bool of_f, double* up, double*) { *up = (lam == 0 || (of_f && lam < 1)) ? 1 : 0; }
  template <typename T>
  static FDIV_HD T l_minus_log_m(T l, T lam) {
    return -log_add_exp(flog(lam), flog(T(1) - lam) - l);
  }
  template <typename T>
  static FDIV_HD T f(T l, T lam) {
    if (lam == T(0)) return ForwardKL::f(l, lam);
    return lam == T(1) ? T(0) : mul0(fexp(l), l_minus_log_m(l, lam));
  }
  template <typename T>
  static FDIV_HD T psi(T l, T lam) {  // -(1-lam) r/M
    if (lam == T(0)) return ForwardKL::psi(l, lam);
    return lam == T(1) ? T(0) : -(T(1) - lam) * fexp(l_minus_log_m(l, lam));
  }
  template <typename T>
  static FDIV_HD T h(T l, T lam) {  // (1-lam)^2 r/M^2
    if (lam == T(0)) return ForwardKL::h(l, lam);
    if (lam == T(1) || is_neg_inf(l)) return T(0);
    const T d = l_minus_log_m(l, lam);
    const T log_m = is_pos_inf(l) ? pos_inf<T>() : l - d;
    return (T(1) - lam) * (T(1) - lam) * fexp(d - log_m);
  }
  // lm = log(lam p + (1-lam) q): q f = p (lp - lm), q psi = -(1-lam) p q / m
  template <typename M, typename T>
  static FDIV_HD T cat_log_m(T lq, T lp, T lam) {
    return cat_lae<M>(flog(lam) + lp, flog1p(-lam) + lq);
  }
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T lam) {
    return M::exp(lp) * (lp - cat_log_m<M>(lq, lp, lam));
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T lam) {
    return -(T(1) - lam) * M::exp(lq + lp - cat_log_m<M>(lq, lp, lam));
  }
};

// DistiLLM SRKL: KL(q || (1-lam) p + lam q);  N = (1-lam) r + lam, u = (1-lam) r / N.
// lam = 0 is reverse_kl, lam = 1 is 0.
struct SkewReverseKL {
  // exponential growth rates of psi, h (and f with of_f): see div_exp_rates
  static void exp_rates(double, bool, double*, double*) {}
  template <typename T>
  static FDIV_HD T log_n(T l, T lam) {
    return log_add_exp(flog(T(1) - lam) + l, flog(lam));
  }
  template <typename T>
  static FDIV_HD T u(T l, T lam) {
    return sigmoid(flog(T(1) - lam) + l - flog(lam));
  }
  template <typename T>
  static FDIV_HD T f(T l, T lam) {
    if (lam == T(0)) return ReverseKL::f(l, lam);
    return lam == T(1) ? T(0) : -log_n(l, lam);
  }
  template <typename T>
  static FDIV_HD T psi(T l, T lam) {
    if (lam == T(0)) return ReverseKL::psi(l, lam);
    return lam == T(1) ? T(0) : -log_n(l, lam) + u(l, lam);
  }
  template <typename T>
  static FDIV_HD T h(T l, T lam) {
    if (lam == T(0)) return ReverseKL::h(l, lam);
    const T v = lam == T(1) ? T(0) : u(l, lam);
    return v * v;
  }
  // ln = log((1-lam) p + lam q): q f = q (lq - ln), q psi = q (lq - ln) + (1-lam) p q / n
  template <typename M, typename T>
  static FDIV_HD T cat_log_n(T lq, T lp, T lam) {
    return cat_lae<M>(flog1p(-lam) + lp, flog(lam) + lq);
  }
  template <typename M, typename T>
  static FDIV_HD T qf(T lq, T lp, T lam) {
    return M::exp(lq) * (lq - cat_log_n<M>(lq, lp, lam));
  }
  template <typename M, typename T>
  static FDIV_HD T qpsi(T lq, T lp, T lam) {
    const T ln = cat_log_n<M>(lq, lp, lam);
    return M::exp(lq) * (lq - ln) + (T(1) - lam) * M::exp(lq + lp - ln);
  }
};

// ---------------------------------------------------------------------------------------------------
// The divergence table: the one list every switch, range check, Python name and test derives from.
// X(name, id, Functor, parameter rule, parameter name, default parameter (NaN: none, the caller chooses))
// Adding a divergence: write its functor above (f, psi, h, qf, qpsi, exp_rates) and add its row here.
#define FDIV_DIVERGENCES(X)                                                   \
  X(forward_kl, 0, ForwardKL, ParamRule::none, "", 0.0)                       \
  X(reverse_kl, 1, ReverseKL, ParamRule::none, "", 0.0)                       \
  X(js, 2, JS, ParamRule::none, "", 0.0)                                      \
  X(gkd_jsd, 3, GkdJsd, ParamRule::unit_interval, "beta", 0.5)                \
  X(squared_hellinger, 4, SquaredHellinger, ParamRule::none, "", 0.0)         \
  X(softened_rkl, 5, SoftenedRKL, ParamRule::none, "", 0.0)                   \
  X(jeffreys, 6, Jeffreys, ParamRule::none, "", 0.0)                          \
  X(total_variation, 7, TotalVariation, ParamRule::none, "", 0.0)             \
  X(pearson_chi2, 8, PearsonChi2, ParamRule::none, "", 0.0)                   \
  X(neyman_chi2, 9, NeymanChi2, ParamRule::none, "", 0.0)                     \
  X(alpha, 10, Alpha, ParamRule::not_zero_or_one, "alpha", kNoDefault)        \
  X(skew_forward_kl, 11, SkewForwardKL, ParamRule::unit_interval, "lam", 0.1) \
  X(skew_reverse_kl, 12, SkewReverseKL, ParamRule::unit_interval, "lam", 0.1)

enum class Divergence : int {
#define FDIV_ENUM(name, id, ...) name = id,
  FDIV_DIVERGENCES(FDIV_ENUM)
#undef FDIV_ENUM
};

constexpr int kNumDivergences = 0
#define FDIV_COUNT(...) +1
    FDIV_DIVERGENCES(FDIV_COUNT)
#undef FDIV_COUNT
    ;

inline bool is_valid_divergence(int id) { return id >= 0 && id < kNumDivergences; }

// FDIV_DIVERGENCE_SWITCH(kind, CALL): CALL(Functor) for the divergence `kind`, e.g.
//   FDIV_DIVERGENCE_SWITCH(k, [&](auto div) { ... decltype(div)::psi(l, a) ... })
// The callable receives a default-constructed functor (an empty struct), so templates can be instantiated
// per divergence (a hot loop outside) or the switch can sit inside a kernel (a uniform branch).
#define FDIV_DIVERGENCE_CASE(name, id, Functor, ...) \
  case Divergence::name:                             \
    return CALL(Functor{});
#define FDIV_DIVERGENCE_SWITCH(KIND, ...)                                             \
  [&](auto&& CALL) {                                                                  \
    switch (KIND) { FDIV_DIVERGENCES(FDIV_DIVERGENCE_CASE) }                          \
    return CALL(ForwardKL{}); /* unreachable: ids are range-checked at the binding */ \
  }(__VA_ARGS__)

template <typename T>
FDIV_HD T div_f(Divergence k, T l, T a) {
  return FDIV_DIVERGENCE_SWITCH(k, [&](auto div) { return decltype(div)::f(l, a); });
}
template <typename T>
FDIV_HD T div_psi(Divergence k, T l, T a) {
  return FDIV_DIVERGENCE_SWITCH(k, [&](auto div) { return decltype(div)::psi(l, a); });
}
template <typename T>
FDIV_HD T div_h(Divergence k, T l, T a) {
  return FDIV_DIVERGENCE_SWITCH(k, [&](auto div) { return decltype(div)::h(l, a); });
}

// How fast the functors' exponentials grow, so callers can clamp sequence-level log-ratios (which reach
// +-1e3) before any exp overflows: psi and h evaluate e^(up l) as l -> +inf and e^(-down l) as l -> -inf
// (f too when of_f). A caller with an exponent budget `cap` (e.g. log of the dtype's max) keeps every value
// finite by clamping l to [-cap/down, cap/up] (no bound where the rate is 0). Forms that stay in log space
// (reverse_kl, js's psi, softened_rkl's psi, ...) have rate 0 and are never clamped. Each functor declares
// its own rates next to its formulas (exp_rates).
inline void div_exp_rates(Divergence k, double a, bool of_f, double* up, double* down) {
  *up = 0;
  *down = 0;
  FDIV_DIVERGENCE_SWITCH(k, [&](auto div) { return decltype(div)::exp_rates(a, of_f, up, down), 0; });
}

// The parameter rules, checked in the dtype the kernels compute in (a value that rounds to an endpoint in
// float32, e.g. alpha = 1 - 1e-9, is refused there, not turned into NaN). Returns nullptr when the value
// is valid, else what was expected, as "must ...".
enum class ParamRule : int { none = 0, unit_interval = 1, not_zero_or_one = 2 };
constexpr double kNoDefault = __builtin_nan("");

inline ParamRule param_rule(Divergence k) {
  switch (k) {
#define FDIV_RULE(name, id, Functor, rule, ...) \
  case Divergence::name:                        \
    return rule;
    FDIV_DIVERGENCES(FDIV_RULE)
#undef FDIV_RULE
  }
  return ParamRule::none;
}

// `single` says whether the kernels will compute in float32 (else float64).
inline const char* param_error(Divergence k, double a, bool single) {
  const ParamRule rule = param_rule(k);
  if (rule == ParamRule::none) return a == 0.0 ? nullptr : "must be 0 (this divergence takes no parameter)";
  if (!(a == a) || a == pos_inf<double>() || a == -pos_inf<double>()) return "must be finite";
  const double tiny = single ? 1.1754943508222875e-38 : 2.2250738585072014e-308;  // smallest normal
  const double as = single ? double(float(a)) : a;                                // the value the kernels see
  if (rule == ParamRule::unit_interval) {
    if (a < 0.0 || a > 1.0) return "must lie in [0, 1]";
    if (a == 0.0 || a == 1.0) return nullptr;  // the endpoints are special-cased exactly
    if (as < tiny || as == 1.0 || (1.0 - as) < tiny)
      return single ? "must lie in [0, 1] and stay strictly inside (0, 1) in float32 (or be exactly 0 or 1)"
                    : "must lie in [0, 1] and stay strictly inside (0, 1) in float64 (or be exactly 0 or 1)";
    return nullptr;
  }
  // not_zero_or_one (alpha): 0 and 1 are the limits reverse_kl and forward_kl, and the formula divides by
  // a (a - 1), so a value that rounds to 0 or 1 (or to a subnormal) in the compute dtype is refused.
  if (a == 0.0 || a == 1.0) return "must not be 0 or 1 (the limits are reverse_kl and forward_kl: use those names)";
  if ((as < 0 ? -as : as) < tiny || as == 1.0 || ((as - 1.0 < 0 ? 1.0 - as : as - 1.0) < (single ? 1.2e-7 : 2.3e-16)))
    return single ? "must not round to 0 or 1 in float32 (|alpha| >= 1.2e-38 and |alpha - 1| >= 1.2e-7)"
                  : "must not round to 0 or 1 in float64";
  return nullptr;
}

// What a kernel needs to know about the divergence: which one and its parameter.
struct DivergenceSpec {
  Divergence kind;
  double param;
};

// TRL's endpoints as plain divergences, so a hot loop never re-tests the parameter per element.
FDIV_HD DivergenceSpec canonical_spec(DivergenceSpec s) {
  if (s.kind == Divergence::gkd_jsd && s.param == 0.0) return {Divergence::forward_kl, 0.0};
  if (s.kind == Divergence::gkd_jsd && s.param == 1.0) return {Divergence::reverse_kl, 0.0};
  return s;
}

// The categorical forms, dispatched at run time like div_f (hot loops should instead canonicalise once,
// switch once outside the loop and call Div::qf<M> directly, see cpu/f_divergence.cpp).
template <typename M, typename T>
FDIV_HD T div_qf(DivergenceSpec s, T lq, T lp) {
  s = canonical_spec(s);
  const T a = T(s.param);
  return FDIV_DIVERGENCE_SWITCH(s.kind, [&](auto div) { return decltype(div)::template qf<M>(lq, lp, a); });
}
template <typename M, typename T>
FDIV_HD T div_qpsi(DivergenceSpec s, T lq, T lp) {
  s = canonical_spec(s);
  const T a = T(s.param);
  return FDIV_DIVERGENCE_SWITCH(s.kind, [&](auto div) { return decltype(div)::template qpsi<M>(lq, lp, a); });
}

}  // namespace fdiv_ops
