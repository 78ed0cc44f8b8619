// The CPU row kernels of f_divergence_loss, one translation unit per student dtype (dense_<dtype>.cpp) plus
// topk.cpp, and api.cpp which checks nothing (the binding did), builds the per-launch constants and splits
// the rows over the OpenMP threads. The numerics are in dense_row.h's header comment.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops::fdiv_cpu {

// Row sums are accumulated in the compute type within blocks of kBlock entries (so the loops vectorise at the
// full float width) and across blocks in float64; pass B also takes its maxima per block (dense_row.h).
constexpr int64_t kBlock = 512;
inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }
// Values of A in one thread's scratch: e_q and e_p (Vs each) and five arrays of one value per block.
inline int64_t dense_scratch_size(int64_t vs, int64_t vt) { return 2 * vs + 5 * num_blocks(vs > vt ? vs : vt); }

// The near-r = 1 polynomials of make_cat_series (divergences.h) in powers of l rather than u = l / tau: tau is a
// power of 2, so the coefficients c_k / tau^k are exact, and the row loops skip one multiply per entry.
// tau = 0: no near forms (float64, total_variation).
template <typename A>
struct NearSeries {
  A tau;
  A f[kCatSeriesTerms];    // G(l) ~ f~(e^l) / l^2
  A psi[kCatSeriesTerms];  // H(l) ~ psi~(e^l) / l
};

template <typename A>
NearSeries<A> near_series(const CatSeries<A>& s) {
  NearSeries<A> n{};
  n.tau = s.tau;
  A pw = 1;
  for (int k = 0; k < kCatSeriesTerms; ++k, pw *= s.inv_tau) {
    n.f[k] = s.f[k] * pw;
    n.psi[k] = s.psi[k] * pw;
  }
  return n;
}

// What every row of one launch shares: the canonical divergence, its parameter and logs, c1 = f'(1) and the
// near-r = 1 polynomials, in the accumulation type A (float, or double for float64).
template <typename A>
struct DenseSetup {
  DivergenceSpec spec;
  CatParam<A> param;
  NearSeries<A> near;
  A c1;
};

template <typename A>
DenseSetup<A> make_setup(DivergenceSpec spec) {
  spec = canonical_spec(spec);
  return {spec, make_cat_param(A(spec.param)), near_series(make_cat_series<A>(spec)), div_c1<A>(spec)};
}

// Whether a divergence's q psi can overflow the float range for finite inputs (pearson_chi2, neyman_chi2 and
// alpha are unbounded): only those pay for the clamp to the finite range (finite_or_nan) in the row loops.
template <typename Div>
constexpr bool kUnboundedPsi =
    std::is_same_v<Div, PearsonChi2> || std::is_same_v<Div, NeymanChi2> || std::is_same_v<Div, Alpha>;

// The divergences whose c1 = f'(1) is 0 for every parameter: their shift by c1 (p - q) is left out.
template <typename Div>
constexpr bool kZeroC1 = std::is_same_v<Div, JS> || std::is_same_v<Div, GkdJsd> || std::is_same_v<Div, Jeffreys> ||
                         std::is_same_v<Div, TotalVariation> || std::is_same_v<Div, PearsonChi2> ||
                         std::is_same_v<Div, NeymanChi2> || std::is_same_v<Div, Alpha>;

// q f~ and q psi~ of one entry, as the CPU row loops evaluate them: Div::cat's closed forms shifted by c1, or
// the near polynomials where |l| < tau (divergences.h's cat_terms with the polynomials in l). Branch-free.
template <typename Div, typename M, typename A>
inline __attribute__((always_inline)) void cpu_cat_terms(const CatPoint<A>& e, const CatParam<A>& c,
                                                         const NearSeries<A>& s, A* qf, A* qpsi) {
  Div::template cat<M>(e, c, qf, qpsi);
  if constexpr (!kZeroC1<Div>) {  // 0 (p - q) is not 0 to the compiler (inf, NaN): skipped where c1 is 0
    const A c1 = Div::c1(c.a);
    *qf -= c1 * (e.p - e.q);
    *qpsi += c1 * e.q;
  }
  if constexpr (Div::kNearF || Div::kNearPsi) {
    const bool near = fabs_(e.l) < s.tau;
    const A ql = e.q * e.l;
    if constexpr (Div::kNearF) *qf = near ? ql * e.l * cat_poly(s.f, e.l) : *qf;
    if constexpr (Div::kNearPsi) *qpsi = near ? ql * cat_poly(s.psi, e.l) : *qpsi;
  }
}

// Rows [begin, end) of a dense launch; scratch holds dense_scratch_size(Vs, Vt) values of A (dense_row.h).
void dense_rows_f32(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);
void dense_rows_f64(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<double>& s, double* scratch);
void dense_rows_bf16(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);
void dense_rows_f16(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);

// Rows [begin, end) of a top-k launch; scratch holds dense_scratch_size(V, V) values of A, then 4 k doubles.
void topk_rows(const FDivergenceTopkArgs& a, int64_t begin, int64_t end, DivergenceSpec spec, void* scratch);

}  // namespace fdiv_ops::fdiv_cpu
