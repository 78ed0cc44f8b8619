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
// Categorical forms (token-level distillation, docs/math.md §3), the numerics the CPU and CUDA kernels share:
//
// 1. Shifted ("Bregman") terms. With c1 = f'(1) (= -psi(1)), f~(r) = f(r) - c1 (r - 1) >= 0 and
//    psi~ = psi + c1 vanish at r = 1 to second and first order. Because sum_v (p_v - q_v) = 0, the loss is
//    sum_v q_v f~(r_v) (plus c1 times the mass the -inf entries drop, 0 when nothing is dropped), a sum of
//    non-negative terms with no cancellation between entries; the gradient q_j (psi_j - S) is unchanged by the
//    constant. Each functor's cat(e, c, &qf, &qpsi) returns the plain q f and q psi of one entry from
//    CatPoint e: q, p (probabilities, which may have underflowed to 0), l = log(p/q) (finite), lq, lp (finite)
//    and tol; cat_terms shifts them (q f - c1 (p - q), q psi + c1 q), which costs at most ~20 ulps for
//    |l| >= tau. Every form uses only bounded quantities (p, q, l, log-space mixtures), so it is finite
//    wherever the divergence is bounded; pearson_chi2, neyman_chi2 and alpha give inf where they are
//    genuinely unbounded.
// 2. Near r = 1 (|l| < tau, tau = 0.5 unless the parameter needs less) a closed form still loses digits to
//    cancellation (p l - p + q ~ q l^2/2 for forward_kl), so float32 evaluates q l^2 G(l/tau) and q l H(l/tau)
//    with degree-7 polynomials G ~ f~/l^2 and H ~ psi~/l fitted on the host in float64 from the functor's own
//    f and psi (make_cat_series, Chebyshev nodes, checked to 1e-9). float64 uses the closed forms throughout.
// 3. total_variation's psi has a dead zone: an entry with |l| <= tol counts as p = q (psi = 0), where
//    tol = cat_dead_zone(x, y, shift) is a few ulps of the entry's own scaled logits, so that p = q up to
//    rounding gives a gradient of exactly 0 instead of +-q/2 from the sign of rounding noise.
// 4. Dropped entries (-inf on either side) contribute no loss and psi = 0, i.e. psi~ = c1.
// M is the math policy (vec_math.h): VecMath in the CPU hot loops, StdMath on CUDA and for doubles.
#pragma once

#include "platform.h"
#include "row_math.h"
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

// One vocabulary entry of a categorical pair, as the kernels hand it to the functors (see 1. above).
template <typename T>
struct CatPoint {
  T q, p;    // probabilities (q = softmax(z/T)_v, p the teacher's); either may have underflowed to 0
  T l;       // log(p/q), finite
  T lq, lp;  // log q, log p, finite
  T tol;     // total_variation's dead zone on |l| (cat_dead_zone); 0 for an exact comparison
};

// The divergence parameter with its logs, computed once per launch (not per element).
template <typename T>
struct CatParam {
  T a, log_a, log1m_a;  // a, log a, log(1 - a): -inf at the endpoints, NaN for a < 0 (alpha; unused there)
};
template <typename T>
FDIV_HD CatParam<T> make_cat_param(T a) {
  return {a, flog(a), flog1p(-a)};
}

// log(a e^l + 1 - a) (lm) and l - lm, for a in [0, 1] given log a and log(1 - a), both accurate for any l:
// one exp and one log1p (of the gap between the two log-space terms), exact at the endpoints a = 0, 1.
template <typename M, typename T>
FDIV_HD void cat_log_mix(T l, T log_a, T log1m_a, T* lm, T* l_minus_lm) {
  const T x1 = log_a + l, x0 = log1m_a;
  const bool top = x1 >= x0;
  const T gap = top ? x0 - x1 : x1 - x0;        // <= 0 (-inf at an endpoint)
  const T sp = M::log1p_unit(M::exp_neg(gap));  // log(1 + e^gap), e^gap in [0, 1]
  *lm = (top ? x1 : x0) + sp;
  *l_minus_lm = (top ? -log_a : l - log1m_a) - sp;
}

// x / max(d, smallest normal): the ratio forms below are 0/0 only where both sides underflowed, and their
// numerators vanish there.
template <typename T>
FDIV_HD T cat_div(T x, T d) {
  return x / (d > min_normal<T>() ? d : min_normal<T>());
}

// Each functor: exp_rates, f, psi, h (of the log-ratio), and for the categorical kernels c1 = f'(1), the flags
// kNearF / kNearPsi (whether q f~ / q psi~ take the near-r = 1 polynomial) and cat (see 1. above).

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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(1);
  }
  // q f = p l, q psi = -p
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    *qf = e.p * e.l;
    *qpsi = -e.p;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(-1);
  }
  // q f = -q l, q psi = q (1 - l)
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    *qf = -e.q * e.l;
    *qpsi = e.q * (T(1) - e.l);
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // L = log((1+r)/2) = log(m/q), m = (p+q)/2: q f = p (l - L) - q L (KL(p||m) + KL(q||m)), q psi = -q L
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    T L, l_minus_L;
    cat_log_mix<M>(e.l, -Ln2<T>::value, -Ln2<T>::value, &L, &l_minus_L);
    *qf = e.p * l_minus_L - e.q * L;
    *qpsi = -e.q * L;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // Categorical form for 0 < b < 1 only (the endpoints are mapped to forward_kl / reverse_kl by
  // canonical_spec before any loop). lm = log M: q f = b p (l - lm) - (1-b) q lm, q psi = -(1-b) q lm.
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>& c, T* qf, T* qpsi) {
    T lm, l_minus_lm;
    cat_log_mix<M>(e.l, c.log_a, c.log1m_a, &lm, &l_minus_lm);
    *qf = c.a * e.p * l_minus_lm - (T(1) - c.a) * e.q * lm;
    *qpsi = -(T(1) - c.a) * e.q * lm;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(-0.5);
  }
  // q f = q - sqrt(p q), q psi = q - sqrt(p q) / 2 (sqrt p sqrt q: no underflow of p q)
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    const T g = fsqrt(e.p) * fsqrt(e.q);
    *qf = e.q - g;
    *qpsi = e.q - T(0.5) * g;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(-1);
  }
  // K = log((1+r)/(2r)) = log(m/p), m = (p+q)/2: q f = (p + q) K = 2 KL(m||p) per entry, q psi = q (K + 1)
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    T K, unused;
    cat_log_mix<M>(-e.l, -Ln2<T>::value, -Ln2<T>::value, &K, &unused);
    *qf = (e.p + e.q) * K;
    *qpsi = e.q * (K + T(1));
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // q f = (p - q) l, q psi = (q - p) - q l
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    *qf = (e.p - e.q) * e.l;
    *qpsi = (e.q - e.p) - e.q * e.l;
  }
};

// The dead zone of total_variation's psi (see 3. above): |l| <= tol counts as p = q. An entry's log-ratio is formed
// from its scaled logits x = z/T, y = t/T (or the teacher's log-prob) and the row's LSE difference,
// l = (y - x) - (LSE(y) - LSE(x)), so when p = q up to rounding |l| is a few ulps of |x|, |y| and that
// difference: tol = kTvDeadZoneUlps * eps * (1 + |x| + |y| + |LSE(y) - LSE(x)|), eps the machine epsilon.
constexpr double kTvDeadZoneUlps = 4.0;
template <typename T>
FDIV_HD T cat_dead_zone(T x, T y, T lse_shift) {
  return T(kTvDeadZoneUlps) * machine_eps<T>() * (T(1) + fabs_(x) + fabs_(y) + fabs_(lse_shift));
}

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
  static constexpr bool kNearF = false, kNearPsi = false;  // not smooth at r = 1: the dead zone instead
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // q f = |p - q| / 2 (as q |expm1(l)| / 2 near r = 1, exact for a tiny divergence), q psi = -q sign(l) / 2,
  // 0 in the dead zone |l| <= tol (the loss has none: there it is rounding noise of size q tol at most).
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    const T near = T(0.5) * e.q * fabs_(M::expm1(e.l));
    *qf = fabs_(e.l) < T(0.5) ? near : T(0.5) * fabs_(e.p - e.q);
    *qpsi = fabs_(e.l) <= e.tol ? T(0) : (e.l > T(0) ? T(-0.5) : T(0.5)) * e.q;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // q f = q E^2 = p r - 2p + q, q psi = -q E (E + 2) = q - p r, E = expm1(l). p r = exp(lp + l) is
  // unbounded: the E forms while they cannot overflow (l <= 20), the exp forms beyond.
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    const T E = M::expm1(e.l), pr = M::exp(e.lp + e.l);
    const bool small = e.l <= T(20);
    *qf = small ? e.q * E * E : pr - T(2) * e.p + e.q;
    *qpsi = small ? -e.q * E * (E + T(2)) : e.q - pr;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // The mirror of pearson_chi2 with k = -l: q f = p expm1(k)^2, q psi = 2 q expm1(k).
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>&, T* qf, T* qpsi) {
    const T k = -e.l, E = M::expm1(k), qk = M::exp(e.lq + k);
    const bool small = k <= T(20);
    *qf = small ? e.p * E * E : qk - T(2) * e.q + e.p;
    *qpsi = small ? T(2) * e.q * E : T(2) * (qk - e.q);
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
  // Near r = 1 the expm1 form; once e^(m l) dominates (m = max(a, 1), the fastest of the three powers as
  // l -> +inf) the powers scaled by e^(-m l), whose bracket tends to a positive constant: no inf - inf when
  // both expm1 overflow (f -> +inf for every a), and inf only where f itself leaves the float range.
  template <typename T>
  static FDIV_HD T f(T l, T a) {
    if (is_pos_inf(l)) return pos_inf<T>();
    const T m = a > T(1) ? a : T(1);
    if (m * l > T(30)) {
      const T bracket = fexp((a - m) * l) - a * fexp((T(1) - m) * l) - (T(1) - a) * fexp(-m * l);
      return fexp(m * l) * (bracket / (a * (a - T(1))));
    }
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T) {
    return T(0);
  }
  // q f = q (expm1(a l) - a expm1(l)) / (a(a-1)) = (p^a q^(1-a) - a p - (1-a) q) / (a(a-1));
  // q psi = -q expm1(a l) / a = (q - p^a q^(1-a)) / a. expm1 forms near r = 1, exp forms far from it.
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>& c, T* qf, T* qpsi) {
    const T a = c.a, l = e.l, al = a * l, mix = M::exp(e.lq + al), em = M::expm1(al);
    const T near_f = e.q * (em - a * M::expm1(l)) / (a * (a - T(1)));
    const T far_f = (mix - a * e.p - (T(1) - a) * e.q) / (a * (a - T(1)));
    // near while |l| and |a l| <= 20 (one compare: GCC leaves the loop scalar on a conjunction of three)
    *qf = fmax_(fabs_(l), fabs_(al)) <= T(20) ? near_f : far_f;
    *qpsi = al <= T(20) ? -e.q * em / a : (e.q - mix) / a;
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T lam) {
    return T(1) - lam;
  }
  // lm = log M: q f = p (l - lm), q psi = -(1-lam) p / M = -(1-lam) p q / (lam p + (1-lam) q). lam = 0 is
  // mapped to forward_kl by canonical_spec (here an underflowed q would lose p q / q = p).
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>& c, T* qf, T* qpsi) {
    const T w = T(1) - c.a;
    T lm, l_minus_lm;
    cat_log_mix<M>(e.l, c.log_a, c.log1m_a, &lm, &l_minus_lm);
    *qf = e.p * l_minus_lm;
    *qpsi = -w * e.p * cat_div(e.q, c.a * e.p + w * e.q);  // p (q / m): no underflow of p q
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
  static constexpr bool kNearF = true, kNearPsi = true;
  template <typename T>
  static FDIV_HD T c1(T lam) {
    return lam - T(1);
  }
  // ln = log N: q f = -q ln, q psi = -q ln + (1-lam) p q / ((1-lam) p + lam q). lam = 0 is mapped to
  // reverse_kl by canonical_spec.
  template <typename M, typename T>
  static FDIV_HD void cat(const CatPoint<T>& e, const CatParam<T>& c, T* qf, T* qpsi) {
    const T w = T(1) - c.a;
    T ln, unused;
    cat_log_mix<M>(e.l, c.log1m_a, c.log_a, &ln, &unused);
    *qf = -e.q * ln;
    *qpsi = w * e.p * cat_div(e.q, w * e.p + c.a * e.q) - e.q * ln;
  }
};

// ---------------------------------------------------------------------------------------------------
// The divergence table: the one list every switch, range check, Python name and test derives from.
// X(name, id, Functor, parameter rule, parameter name, default parameter (NaN: none, the caller chooses))
// Adding a divergence: write its functor above (f, psi, h, exp_rates, c1, kNearF/kNearPsi, cat) and add its row.
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

// TRL's endpoints (and lam = 0 of the skew divergences, the same functions) as plain divergences, so a hot
// loop never re-tests the parameter per element and no categorical form divides by a vanishing mixture.
FDIV_HD DivergenceSpec canonical_spec(DivergenceSpec s) {
  if (s.kind == Divergence::gkd_jsd && s.param == 0.0) return {Divergence::forward_kl, 0.0};
  if (s.kind == Divergence::gkd_jsd && s.param == 1.0) return {Divergence::reverse_kl, 0.0};
  if (s.kind == Divergence::skew_forward_kl && s.param == 0.0) return {Divergence::forward_kl, 0.0};
  if (s.kind == Divergence::skew_reverse_kl && s.param == 0.0) return {Divergence::reverse_kl, 0.0};
  return s;
}

// ---------------------------------------------------------------------------------------------------
// The categorical forms as the kernels evaluate them (see 1.-4. at the top of this file).

constexpr int kCatSeriesTerms = 8;  // degree 7 in u = l / tau

// The near-r = 1 polynomials of one divergence and parameter (tau = 0: none, every entry takes cat's closed
// forms). Built on the host by make_cat_series and passed to the kernels by value.
template <typename T>
struct CatSeries {
  T tau, inv_tau;
  T f[kCatSeriesTerms];    // G(u) ~ f~(e^l) / l^2
  T psi[kCatSeriesTerms];  // H(u) ~ psi~(e^l) / l
};

template <typename T>
FDIV_HD T cat_poly(const T* c, T u) {
  T r = c[kCatSeriesTerms - 1];
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int i = kCatSeriesTerms - 2; i >= 0; --i) r = r * u + c[i];
  return r;
}

// q f~ and q psi~ of one entry: Div::cat's closed forms shifted by c1, or the near polynomials where
// |l| < tau. Branch-free (both are evaluated and one is selected), so the CPU loops vectorise.
template <typename Div, typename M, typename T>
FDIV_HD void cat_terms(const CatPoint<T>& e, const CatParam<T>& c, const CatSeries<T>& s, T* qf, T* qpsi) {
  Div::template cat<M>(e, c, qf, qpsi);
  const T c1 = Div::c1(c.a);  // unconditional: a branch on it would make GCC unswitch (and not vectorise) loops
  *qf -= c1 * (e.p - e.q);
  *qpsi += c1 * e.q;
  const bool near = fabs_(e.l) < s.tau;
  const T u = e.l * s.inv_tau;
  if constexpr (Div::kNearF) *qf = near ? e.q * (e.l * e.l) * cat_poly(s.f, u) : *qf;
  if constexpr (Div::kNearPsi) *qpsi = near ? e.q * e.l * cat_poly(s.psi, u) : *qpsi;
}

// c1 = f'(1) of a (canonical) spec.
template <typename T>
FDIV_HD T div_c1(DivergenceSpec s) {
  const T a = T(s.param);
  return FDIV_DIVERGENCE_SWITCH(s.kind, [&](auto div) { return decltype(div)::c1(a); });
}

namespace detail {

// Solves the n x n system A x = b in place (Gaussian elimination, partial pivoting); false if singular.
inline bool solve_dense(double* A, double* b, int n) {
  for (int k = 0; k < n; ++k) {
    int piv = k;
    for (int i = k + 1; i < n; ++i)
      if (fabs_(A[i * n + k]) > fabs_(A[piv * n + k])) piv = i;
    if (A[piv * n + k] == 0.0) return false;
    for (int j = 0; j < n; ++j) {
      const double t = A[k * n + j];
      A[k * n + j] = A[piv * n + j];
      A[piv * n + j] = t;
    }
    const double tb = b[k];
    b[k] = b[piv];
    b[piv] = tb;
    for (int i = k + 1; i < n; ++i) {
      const double m = A[i * n + k] / A[k * n + k];
      for (int j = k; j < n; ++j) A[i * n + j] -= m * A[k * n + j];
      b[i] -= m * b[k];
    }
  }
  for (int k = n - 1; k >= 0; --k) {
    for (int j = k + 1; j < n; ++j) b[k] -= A[k * n + j] * b[j];
    b[k] /= A[k * n + k];
  }
  return true;
}

// G(u) = f~(e^(tau u)) / (tau u)^2 (which = 0) or H(u) = psi~(e^(tau u)) / (tau u), in float64 from the
// functor's own f and psi: the f~ cancellation costs ~1e-16 / |l|, harmless at the fit's nodes.
template <typename Div>
double cat_series_target(int which, double u, double tau, double a) {
  const double l = tau * u, c1 = Div::c1(a);
  if (which == 0) return (Div::f(l, a) - c1 * fexpm1(l)) / (l * l);
  return (Div::psi(l, a) + c1) / l;
}

// Interpolates G and H at the 8 Chebyshev nodes of [-1, 1] and checks the polynomials at 40 other points;
// true when both agree with float64 to 1e-9 of their largest value (enough for float32).
template <typename Div>
bool fit_cat_series(double tau, double a, double* f_coef, double* psi_coef) {
  constexpr int n = kCatSeriesTerms;
  constexpr double kPi = 3.14159265358979323846;
  for (int which = 0; which < 2; ++which) {
    double A[n * n], b[n];
    for (int i = 0; i < n; ++i) {
      const double u = -__builtin_cos((2 * i + 1) * kPi / (2 * n));
      double pw = 1;
      for (int j = 0; j < n; ++j, pw *= u) A[i * n + j] = pw;
      b[i] = cat_series_target<Div>(which, u, tau, a);
    }
    if (!solve_dense(A, b, n)) return false;
    double err = 0, scale = 0;
    for (int i = 0; i < 40; ++i) {
      const double u = -0.99 + 1.98 * (i + 0.5) / 40;
      const double want = cat_series_target<Div>(which, u, tau, a), got = cat_poly(b, u);
      if (!(want == want) || !(got == got) || is_pos_inf(fabs_(want))) return false;
      err = fmax_(err, fabs_(got - want));
      scale = fmax_(scale, fabs_(want));
    }
    if (err > 1e-9 * scale + 1e-300) return false;
    double* out = which == 0 ? f_coef : psi_coef;  // coefficients in u = l / tau
    for (int j = 0; j < n; ++j) out[j] = b[j];
  }
  return true;
}

}  // namespace detail

// The near polynomials of a spec for the compute type T (float32 only: float64 is exact enough in closed
// form). tau starts at 0.5 and halves until the fit holds (alpha with a large |alpha| varies on a scale
// 1/|alpha|); a divergence without near forms (total_variation) gets tau = 0. Host code, once per launch.
template <typename T>
inline CatSeries<T> make_cat_series(DivergenceSpec spec) {
  CatSeries<T> s{};
  if (sizeof(T) != sizeof(float)) return s;
  spec = canonical_spec(spec);
  FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) {
    using Div = decltype(div);
    if (!Div::kNearF && !Div::kNearPsi) return 0;
    double f_coef[kCatSeriesTerms], psi_coef[kCatSeriesTerms];
    for (double tau = 0.5; tau > 1e-3; tau *= 0.5) {
      if (!detail::fit_cat_series<Div>(tau, spec.param, f_coef, psi_coef)) continue;
      s.tau = T(tau);
      s.inv_tau = T(1.0 / tau);
      for (int j = 0; j < kCatSeriesTerms; ++j) {
        s.f[j] = T(f_coef[j]);
        s.psi[j] = T(psi_coef[j]);
      }
      return 0;
    }
    return 0;
  });
  return s;
}

// The unshifted categorical terms q f(p/q) and q psi(p/q) of one entry from its log-probabilities (finite),
// far forms only, dispatched at run time (tests and simple kernels; hot loops canonicalise once, switch once
// outside the loop and call cat_terms<Div> directly, see cpu/f_divergence/).
template <typename M, typename T>
FDIV_HD void div_cat(DivergenceSpec s, T lq, T lp, T* qf, T* qpsi) {
  s = canonical_spec(s);
  const CatParam<T> c = make_cat_param(T(s.param));
  const CatPoint<T> e{M::exp(lq), M::exp(lp), lp - lq, lq, lp, T(0)};
  FDIV_DIVERGENCE_SWITCH(s.kind, [&](auto div) { return decltype(div)::template cat<M>(e, c, qf, qpsi), 0; });
}
template <typename M, typename T>
FDIV_HD T div_qf(DivergenceSpec s, T lq, T lp) {
  T qf, qpsi;
  div_cat<M>(s, lq, lp, &qf, &qpsi);
  return qf;
}
template <typename M, typename T>
FDIV_HD T div_qpsi(DivergenceSpec s, T lq, T lp) {
  T qf, qpsi;
  div_cat<M>(s, lq, lp, &qf, &qpsi);
  return qpsi;
}

}  // namespace fdiv_ops
