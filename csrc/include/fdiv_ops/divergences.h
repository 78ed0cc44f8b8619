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
#pragma once

#include "platform.h"

namespace fdiv_ops {

// X-macro: the single list of divergences and their ids (Python reads the ids through the binding).
#define FDIV_DIVERGENCES(X) \
  X(forward_kl, 0)          \
  X(reverse_kl, 1)          \
  X(js, 2)                  \
  X(gkd_jsd, 3)             \
  X(squared_hellinger, 4)   \
  X(softened_rkl, 5)        \
  X(jeffreys, 6)            \
  X(total_variation, 7)     \
  X(pearson_chi2, 8)        \
  X(neyman_chi2, 9)         \
  X(alpha, 10)              \
  X(skew_forward_kl, 11)    \
  X(skew_reverse_kl, 12)

enum class Divergence : int {
#define FDIV_ENUM(name, id) name = id,
  FDIV_DIVERGENCES(FDIV_ENUM)
#undef FDIV_ENUM
};

template <typename T> struct Ln2 { static constexpr T value = T(0.6931471805599453094172321214581766); };

struct ForwardKL {  // f = r log r
  template <typename T> static FDIV_HD T f(T l, T) { return is_neg_inf(l) ? T(0) : fexp(l) * l; }
  template <typename T> static FDIV_HD T psi(T l, T) { return -fexp(l); }
  template <typename T> static FDIV_HD T h(T l, T) { return fexp(l); }
};

struct ReverseKL {  // f = -log r
  template <typename T> static FDIV_HD T f(T l, T) { return -l; }
  template <typename T> static FDIV_HD T psi(T l, T) { return T(1) - l; }
  template <typename T> static FDIV_HD T h(T, T) { return T(1); }
};

struct JS {  // f = r log r - (r+1) log((r+1)/2);  L = log((1+r)/2) = softplus(l) - log 2
  template <typename T> static FDIV_HD T f(T l, T) {
    if (is_pos_inf(l)) return pos_inf<T>();
    T L = softplus(l) - Ln2<T>::value;
    return mul0(fexp(l), Ln2<T>::value - softplus(-l)) - L;  // r (l - L) - L
  }
  template <typename T> static FDIV_HD T psi(T l, T) { return Ln2<T>::value - softplus(l); }
  template <typename T> static FDIV_HD T h(T l, T) { return sigmoid(l); }
};

// beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q; M = m/q. TRL's endpoints: beta = 0 is
// forward_kl and beta = 1 is reverse_kl (the formula itself tends to 0 there).
struct GkdJsd {
  template <typename T> static FDIV_HD T log_m(T l, T b) { return log_add_exp(flog(b) + l, flog(T(1) - b)); }
  template <typename T> static FDIV_HD T f(T l, T b) {
    if (b == T(0)) return ForwardKL::f(l, b);
    if (b == T(1)) return ReverseKL::f(l, b);
    if (is_pos_inf(l)) return pos_inf<T>();
    T l_minus_logm = -log_add_exp(flog(b), flog(T(1) - b) - l);
    return b * mul0(fexp(l), l_minus_logm) - (T(1) - b) * log_m(l, b);
  }
  template <typename T> static FDIV_HD T psi(T l, T b) {
    if (b == T(0)) return ForwardKL::psi(l, b);
    if (b == T(1)) return ReverseKL::psi(l, b);
    return -(T(1) - b) * log_m(l, b);
  }
  template <typename T> static FDIV_HD T h(T l, T b) {
    if (b == T(0)) return ForwardKL::h(l, b);
    if (b == T(1)) return ReverseKL::h(l, b);
    return b * (T(1) - b) * fexp(-log_add_exp(flog(b), flog(T(1) - b) - l));  // b(1-b) r/M
  }
};

struct SquaredHellinger {  // f = 1 - sqrt(r)
  template <typename T> static FDIV_HD T f(T l, T) { return T(1) - fexp(T(0.5) * l); }
  template <typename T> static FDIV_HD T psi(T l, T) { return T(1) - T(0.5) * fexp(T(0.5) * l); }
  template <typename T> static FDIV_HD T h(T l, T) { return T(0.25) * fexp(T(0.5) * l); }
};

struct SoftenedRKL {  // f = (r+1) log((r+1)/(2r)); log((1+r)/(2r)) = softplus(-l) - log 2
  template <typename T> static FDIV_HD T f(T l, T) { return (fexp(l) + T(1)) * (softplus(-l) - Ln2<T>::value); }
  template <typename T> static FDIV_HD T psi(T l, T) { return softplus(-l) - Ln2<T>::value + T(1); }
  template <typename T> static FDIV_HD T h(T l, T) { return sigmoid(-l); }
};

struct Jeffreys {  // f = (r-1) log r
  template <typename T> static FDIV_HD T f(T l, T) { return fexpm1(l) * l; }
  template <typename T> static FDIV_HD T psi(T l, T) { return -fexpm1(l) - l; }
  template <typename T> static FDIV_HD T h(T l, T) { return fexp(l) + T(1); }
};

struct TotalVariation {  // f = |r-1|/2; psi = -sign(r-1)/2 with sign(0) = 0, so p == q gives 0
  template <typename T> static FDIV_HD T f(T l, T) { return T(0.5) * fabs_(fexpm1(l)); }
  template <typename T> static FDIV_HD T psi(T l, T) { return l > T(0) ? T(-0.5) : (l < T(0) ? T(0.5) : T(0)); }
  template <typename T> static FDIV_HD T h(T, T) { return T(0); }
};

struct PearsonChi2 {  // f = (r-1)^2
  template <typename T> static FDIV_HD T f(T l, T) { T e = fexpm1(l); return e * e; }
  template <typename T> static FDIV_HD T psi(T l, T) { return -fexpm1(T(2) * l); }
  template <typename T> static FDIV_HD T h(T l, T) { return T(2) * fexp(T(2) * l); }
};

struct NeymanChi2 {  // f = (1-r)^2 / r = 4 sinh(l/2)^2
  template <typename T> static FDIV_HD T f(T l, T) { T s = fsinh(T(0.5) * l); return T(4) * s * s; }
  template <typename T> static FDIV_HD T psi(T l, T) { return T(2) * fexpm1(-l); }
  template <typename T> static FDIV_HD T h(T l, T) { return T(2) * fexp(-l); }
};

struct Alpha {  // f = (r^a - a r - (1-a)) / (a(a-1)),  a not in {0, 1}
  template <typename T> static FDIV_HD T f(T l, T a) {
    if (is_pos_inf(l)) return pos_inf<T>();
    return (fexpm1(a * l) - a * fexpm1(l)) / (a * (a - T(1)));
  }
  template <typename T> static FDIV_HD T psi(T l, T a) { return -fexpm1(a * l) / a; }
  template <typename T> static FDIV_HD T h(T l, T a) { return fexp(a * l); }
};

// DistiLLM SKL: KL(p || lam p + (1-lam) q);  M = lam r + 1 - lam. lam = 0 is forward_kl, lam = 1 is 0.
struct SkewForwardKL {
  template <typename T> static FDIV_HD T l_minus_log_m(T l, T lam) {
    return -log_add_exp(flog(lam), flog(T(1) - lam) - l);
  }
  template <typename T> static FDIV_HD T f(T l, T lam) {
    if (lam == T(0)) return ForwardKL::f(l, lam);
    return lam == T(1) ? T(0) : mul0(fexp(l), l_minus_log_m(l, lam));
  }
  template <typename T> static FDIV_HD T psi(T l, T lam) {  // -(1-lam) r/M
    if (lam == T(0)) return ForwardKL::psi(l, lam);
    return lam == T(1) ? T(0) : -(T(1) - lam) * fexp(l_minus_log_m(l, lam));
  }
  template <typename T> static FDIV_HD T h(T l, T lam) {  // (1-lam)^2 r/M^2
    if (lam == T(0)) return ForwardKL::h(l, lam);
    if (lam == T(1) || is_neg_inf(l)) return T(0);
    const T d = l_minus_log_m(l, lam);
    const T log_m = is_pos_inf(l) ? pos_inf<T>() : l - d;
    return (T(1) - lam) * (T(1) - lam) * fexp(d - log_m);
  }
};

// DistiLLM SRKL: KL(q || (1-lam) p + lam q);  N = (1-lam) r + lam, u = (1-lam) r / N.
// lam = 0 is reverse_kl, lam = 1 is 0.
struct SkewReverseKL {
  template <typename T> static FDIV_HD T log_n(T l, T lam) { return log_add_exp(flog(T(1) - lam) + l, flog(lam)); }
  template <typename T> static FDIV_HD T u(T l, T lam) { return sigmoid(flog(T(1) - lam) + l - flog(lam)); }
  template <typename T> static FDIV_HD T f(T l, T lam) {
    if (lam == T(0)) return ReverseKL::f(l, lam);
    return lam == T(1) ? T(0) : -log_n(l, lam);
  }
  template <typename T> static FDIV_HD T psi(T l, T lam) {
    if (lam == T(0)) return ReverseKL::psi(l, lam);
    return lam == T(1) ? T(0) : -log_n(l, lam) + u(l, lam);
  }
  template <typename T> static FDIV_HD T h(T l, T lam) {
    if (lam == T(0)) return ReverseKL::h(l, lam);
    const T v = lam == T(1) ? T(0) : u(l, lam);
    return v * v;
  }
};

// Run-time dispatch: the divergence is a uniform branch inside a kernel, so one compiled kernel serves
// all of them (templating on the divergence would multiply the CUDA compile time by 13).
#define FDIV_DIVERGENCE_SWITCH(KIND, FN, ...)                                   \
  switch (KIND) {                                                               \
    case Divergence::forward_kl: return ForwardKL::FN(__VA_ARGS__);             \
    case Divergence::reverse_kl: return ReverseKL::FN(__VA_ARGS__);             \
    case Divergence::js: return JS::FN(__VA_ARGS__);                            \
    case Divergence::gkd_jsd: return GkdJsd::FN(__VA_ARGS__);                   \
    case Divergence::squared_hellinger: return SquaredHellinger::FN(__VA_ARGS__); \
    case Divergence::softened_rkl: return SoftenedRKL::FN(__VA_ARGS__);         \
    case Divergence::jeffreys: return Jeffreys::FN(__VA_ARGS__);                \
    case Divergence::total_variation: return TotalVariation::FN(__VA_ARGS__);   \
    case Divergence::pearson_chi2: return PearsonChi2::FN(__VA_ARGS__);         \
    case Divergence::neyman_chi2: return NeymanChi2::FN(__VA_ARGS__);           \
    case Divergence::alpha: return Alpha::FN(__VA_ARGS__);                      \
    case Divergence::skew_forward_kl: return SkewForwardKL::FN(__VA_ARGS__);    \
    case Divergence::skew_reverse_kl: return SkewReverseKL::FN(__VA_ARGS__);    \
  }                                                                             \
  return T(0) / T(0);

template <typename T> FDIV_HD T div_f(Divergence k, T l, T a) { FDIV_DIVERGENCE_SWITCH(k, f, l, a) }
template <typename T> FDIV_HD T div_psi(Divergence k, T l, T a) { FDIV_DIVERGENCE_SWITCH(k, psi, l, a) }
template <typename T> FDIV_HD T div_h(Divergence k, T l, T a) { FDIV_DIVERGENCE_SWITCH(k, h, l, a) }

// How fast the functors' exponentials grow, so callers can clamp sequence-level log-ratios (which reach
// +-1e3) before any exp overflows: psi and h evaluate e^(up l) as l -> +inf and e^(-down l) as l -> -inf
// (f too when of_f). A caller with an exponent budget `cap` (e.g. log of the dtype's max) keeps every value
// finite by clamping l to [-cap/down, cap/up] (no bound where the rate is 0). Forms that stay in log space
// (reverse_kl, js's psi, softened_rkl's psi, ...) have rate 0 and are never clamped.
template <typename T> inline void div_exp_rates(Divergence k, T a, bool of_f, T* up, T* down) {
  T u = 0, d = 0;
  switch (k) {
    case Divergence::forward_kl: u = 1; break;
    case Divergence::reverse_kl: break;
    case Divergence::js: u = of_f ? T(1) : T(0); break;
    case Divergence::gkd_jsd: u = (a == T(0) || (of_f && a < T(1))) ? T(1) : T(0); break;
    case Divergence::squared_hellinger: u = T(0.5); break;
    case Divergence::softened_rkl: u = of_f ? T(1) : T(0); break;
    case Divergence::jeffreys: u = 1; break;
    case Divergence::total_variation: u = of_f ? T(1) : T(0); break;
    case Divergence::pearson_chi2: u = 2; break;
    case Divergence::neyman_chi2: d = 1; u = of_f ? T(1) : T(0); break;
    case Divergence::alpha:
      if (a > T(0)) u = of_f ? fmax_(a, T(1)) : a;
      else { d = -a; u = of_f ? T(1) : T(0); }
      break;
    case Divergence::skew_forward_kl: u = (a == T(0) || (of_f && a < T(1))) ? T(1) : T(0); break;
    case Divergence::skew_reverse_kl: break;
  }
  *up = u;
  *down = d;
}

// What a kernel needs to know about the divergence: which one and its parameter.
struct DivergenceSpec {
  Divergence kind;
  double param;
};

}  // namespace fdiv_ops
