// CPU kernels of f_divergence_loss; the formulas are in include/fdiv_ops/f_divergence.h.
//
// Dense form, per row (one OpenMP thread per row, rows split statically):
//   pass 1   maxima of z and t (no exp), then sum exp(z/T - max), sum exp(t/T - max): the two LSEs
//   pass 2   loss = sum q f(p/q), S = sum q psi(p/q) over the kept entries (categorical forms of
//            divergences.h, evaluated with the vectorised exp/log of vec_math.h)
//   pass 3   grad_j = scale/T (qpsi_j - q_j S), written once in the student's dtype
//   hard term (labels given): + w (LSE_1(z) - z_y) in the loss and + scale w (softmax(z)_j - [j=y]) in
//            pass 3; LSE_1 at temperature 1 is one more max/sum pass over z only when T != 1
// Pass 3 reads z_j before writing g_j, per element, so grad may alias the student row (fused-linear op).
// Bytes moved per row: pass 1 reads z and t twice, pass 2 once, pass 3 reads z and t and writes the
// gradient; a 32000-entry fp32 row pair is 256 KB, so the re-reads come from L2, and DRAM sees about
// one read of each input and one write of the gradient. Nothing (rows x V) is allocated.
// Top-k form: pass 1 over the student row, a gather of the k teacher tokens, one gradient pass.
// Every hot loop is `#pragma omp simd` with the divergence switched outside it, inside functions
// multiversioned for x86-64-v4 / v3 / baseline (target_clones), so the wheel still runs on any x86-64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include <omp.h>

#include "fdiv_ops/cpu_clones.h"
#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops {
namespace {

using cpu::to_float;

#define FDIV_INLINE __attribute__((always_inline)) inline

using M = VecMath;

template <typename A>
constexpr A kNegInf = -std::numeric_limits<A>::infinity();
template <typename A>
constexpr A kMax = std::numeric_limits<A>::max();

// q psi clamped to the finite range: pearson/neyman/alpha can overflow to +-inf, and inf - inf in the
// gradient would be NaN; clamped, the gradient saturates instead (the loss itself stays inf).
template <typename A>
FDIV_INLINE A finite(A x) {
  const A lo = x < -kMax<A> ? -kMax<A> : x;
  return lo > kMax<A> ? kMax<A> : lo;
}

// The log-sum-exp of x * inv_t over n entries, kept as (shift, log_sum) with LSE = shift + log_sum:
// log-probabilities are formed as (x * inv_t - shift) - log_sum, which is exact in the first step
// (Sterbenz), whereas x - LSE loses the low bits of log_sum when |x| ~ 1e4. A max pass (no exp), then
// a sum pass (one exp per entry). A row of -inf gives shift = -inf.
template <typename A>
struct RowLse {
  A shift, log_sum;
  FDIV_INLINE A log_prob(A scaled) const { return (scaled - shift) - log_sum; }
};

template <typename T, typename A>
FDIV_INLINE RowLse<A> row_lse(const T* x, int64_t n, A inv_t) {
  A mx = kNegInf<A>;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) {
    const A v = static_cast<A>(to_float(x[j]));
    mx = v > mx ? v : mx;
  }
  if (mx == kNegInf<A>) return {mx, A(0)};
  const A ms = mx * inv_t;
  A sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += M::exp(static_cast<A>(to_float(x[j])) * inv_t - ms);
  return {ms, M::log(sum)};
}

// Pass 3 of a dense row: g_j = coef (qpsi_j [kept] - q_j S) (+ hard_coef (softmax(z)_j - [j = y])).
// Each iteration reads z_j and t_j before it writes g_j and touches no other entry, so g may alias z.
template <typename T, typename Div, bool kHard>
FDIV_INLINE void dense_grad(const T* z, const T* t, T* g, int64_t Vc, int64_t Vs, RowLse<acc_t<T>> lse_z,
                            RowLse<acc_t<T>> lse_t, RowLse<acc_t<T>> lse_1, acc_t<T> inv_t, acc_t<T> t_scale,
                            acc_t<T> param, acc_t<T> coef, acc_t<T> s, acc_t<T> hard_coef, int64_t y) {
  using A = acc_t<T>;
#pragma omp simd
  for (int64_t j = 0; j < Vc; ++j) {
    const A zj = static_cast<A>(to_float(z[j]));
    const A lq = lse_z.log_prob(zj * inv_t);
    const A lp = lse_t.log_prob(static_cast<A>(to_float(t[j])) * t_scale);
    const bool drop = (lq == kNegInf<A>) | (lp == kNegInf<A>);
    const A qpsi = finite(Div::template qpsi<M>(lq, lp, param));  // computed unconditionally: no branch
    A gj = coef * ((drop ? A(0) : qpsi) - M::exp(lq) * s);
    if constexpr (kHard) gj += hard_coef * (M::exp(lse_1.log_prob(zj)) - (j == y ? A(1) : A(0)));
    g[j] = cpu::from_float<T>(gj);
  }
  // Student entries past the teacher's vocabulary: the teacher is -inf there, the entry is dropped.
#pragma omp simd
  for (int64_t j = Vc; j < Vs; ++j) {
    const A zj = static_cast<A>(to_float(z[j]));
    A gj = -coef * M::exp(lse_z.log_prob(zj * inv_t)) * s;
    if constexpr (kHard) gj += hard_coef * (M::exp(lse_1.log_prob(zj)) - (j == y ? A(1) : A(0)));
    g[j] = cpu::from_float<T>(gj);
  }
}

template <typename T, typename Div>
FDIV_INLINE void dense_row(const FDivergenceArgs& a, int64_t r, DivergenceSpec spec) {
  using A = acc_t<T>;
  const int64_t Vs = a.student_vocab, Vt = a.teacher_vocab, Vc = std::min(Vs, Vt);
  const T* z = static_cast<const T*>(a.student) + r * Vs;
  const T* t = static_cast<const T*>(a.teacher) + r * Vt;
  T* g = static_cast<T*>(a.grad) + r * Vs;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature), param = A(spec.param);
  const RowLse<A> dead{kNegInf<A>, A(0)};
  const RowLse<A> lse_z = scale == A(0) ? dead : row_lse(z, Vs, inv_t);
  const A t_scale = a.teacher_is_logprobs ? A(1) : inv_t;
  const RowLse<A> lse_t =
      a.teacher_is_logprobs ? RowLse<A>{A(0), A(0)} : (scale == A(0) ? dead : row_lse(t, Vt, inv_t));
  if (lse_z.shift == kNegInf<A> || lse_t.shift == kNegInf<A>) {  // ignored row, or nothing kept: 0 and 0
    *loss_out = A(0);
#pragma omp simd
    for (int64_t j = 0; j < Vs; ++j) g[j] = cpu::from_float<T>(A(0));
    return;
  }
  // The hard term: CE at temperature 1, so a second LSE when T != 1; z_y is read before pass 3 (in place).
  const bool hard = a.labels != nullptr;
  const int64_t y = hard ? a.labels[r] : -1;
  if (hard && (y < 0 || y >= Vs)) {  // loud NaN rather than a read out of bounds
    const A nan = std::numeric_limits<A>::quiet_NaN();
    *loss_out = nan;
    for (int64_t j = 0; j < Vs; ++j) g[j] = cpu::from_float<T>(nan);
    return;
  }
  const RowLse<A> lse_1 = !hard ? dead : (inv_t == A(1) ? lse_z : row_lse(z, Vs, A(1)));
  const A hard_w = A(a.hard_weight);
  const A ce = hard ? -lse_1.log_prob(static_cast<A>(to_float(z[y]))) : A(0);

  A loss = 0, s = 0;
#pragma omp simd reduction(+ : loss, s)
  for (int64_t j = 0; j < Vc; ++j) {
    const A lq = lse_z.log_prob(static_cast<A>(to_float(z[j])) * inv_t);
    const A lp = lse_t.log_prob(static_cast<A>(to_float(t[j])) * t_scale);
    const bool drop = (lq == kNegInf<A>) | (lp == kNegInf<A>);
    const A qf = Div::template qf<M>(lq, lp, param);
    const A qpsi = finite(Div::template qpsi<M>(lq, lp, param));
    loss += drop ? A(0) : qf;
    s += drop ? A(0) : qpsi;
  }
  s = finite(s);

  const A coef = scale * inv_t;
  if (hard)
    dense_grad<T, Div, true>(z, t, g, Vc, Vs, lse_z, lse_t, lse_1, inv_t, t_scale, param, coef, s, scale * hard_w, y);
  else
    dense_grad<T, Div, false>(z, t, g, Vc, Vs, lse_z, lse_t, lse_1, inv_t, t_scale, param, coef, s, A(0), y);
  *loss_out = scale * (hard ? loss + hard_w * ce : loss);
}

template <typename T, typename Div>
FDIV_INLINE void topk_row(const FDivergenceTopkArgs& a, int64_t r, DivergenceSpec spec, acc_t<T>* qpsi_buf) {
  using A = acc_t<T>;
  const int64_t V = a.vocab, k = a.k;
  const T* z = static_cast<const T*>(a.student) + r * V;
  const int64_t* idx = a.indices + r * k;
  const A* tl = static_cast<const A*>(a.teacher_logprobs) + r * k;
  T* g = static_cast<T*>(a.grad) + r * V;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature), param = A(spec.param);
  const RowLse<A> lse_z = scale == A(0) ? RowLse<A>{kNegInf<A>, A(0)} : row_lse(z, V, inv_t);
  if (lse_z.shift == kNegInf<A>) {
    *loss_out = A(0);
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) g[j] = cpu::from_float<T>(A(0));
    return;
  }
  bool bad = false;
  A q_top = 0, p_top = 0;
  for (int64_t i = 0; i < k; ++i) {
    bad |= idx[i] < 0 || idx[i] >= V;
    if (bad) break;
    q_top += std::exp(lse_z.log_prob(static_cast<A>(to_float(z[idx[i]])) * inv_t));
    p_top += std::exp(tl[i]);
  }
  if (bad) {  // an out-of-range index: loud NaN rather than a read out of bounds
    const A nan = std::numeric_limits<A>::quiet_NaN();
    *loss_out = nan;
    for (int64_t j = 0; j < V; ++j) g[j] = cpu::from_float<T>(nan);
    return;
  }
  // The bucket: the rest of each side's mass (clamped at 0 against rounding; 0 drops the bucket).
  const A lq_rest = std::log(std::max(A(1) - q_top, A(0)));
  const A lp_rest = std::log(std::max(A(1) - p_top, A(0)));
  const bool rest_kept = lq_rest != kNegInf<A> && lp_rest != kNegInf<A>;
  A loss = 0, s = 0;
  if (rest_kept) {
    loss = Div::template qf<StdMath>(lq_rest, lp_rest, param);
    s = finite(Div::template qpsi<StdMath>(lq_rest, lp_rest, param));
  }
  for (int64_t i = 0; i < k; ++i) {
    const A lq = lse_z.log_prob(static_cast<A>(to_float(z[idx[i]])) * inv_t), lp = tl[i];
    const bool drop = (lq == kNegInf<A>) | (lp == kNegInf<A>);
    qpsi_buf[i] = drop ? A(0) : finite(Div::template qpsi<StdMath>(lq, lp, param));
    loss += drop ? A(0) : Div::template qf<StdMath>(lq, lp, param);
    s += qpsi_buf[i];
  }
  s = finite(s);
  // psi of the bucket = q psi / q, evaluated at lq = 0 (psi depends on the log-ratio only).
  const A psi_rest = rest_kept ? finite(Div::template qpsi<StdMath>(A(0), lp_rest - lq_rest, param)) : A(0);
  const A coef = scale * inv_t, rest_coef = finite(psi_rest - s);
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) {
    const A lq = lse_z.log_prob(static_cast<A>(to_float(z[j])) * inv_t);
    g[j] = cpu::from_float<T>(coef * M::exp(lq) * rest_coef);
  }
  for (int64_t i = 0; i < k; ++i) {
    const A q = std::exp(lse_z.log_prob(static_cast<A>(to_float(z[idx[i]])) * inv_t));
    g[idx[i]] = cpu::from_float<T>(coef * (qpsi_buf[i] - q * s));
  }
  *loss_out = scale * loss;
}

// Non-template entry points (one per dtype) so that target_clones can multiversion them; the
// divergence switch sits outside every loop.
#define FDIV_ROW_FNS(T, SUFFIX)                                                                             \
  FDIV_CPU_CLONES void dense_rows_##SUFFIX(const FDivergenceArgs& a, int64_t begin, int64_t end,            \
                                           DivergenceSpec spec) {                                           \
    for (int64_t r = begin; r < end; ++r) {                                                                 \
      FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) { dense_row<T, decltype(div)>(a, r, spec); });        \
    }                                                                                                       \
  }                                                                                                         \
  FDIV_CPU_CLONES void topk_rows_##SUFFIX(const FDivergenceTopkArgs& a, int64_t begin, int64_t end,         \
                                          DivergenceSpec spec, acc_t<T>* buf) {                             \
    for (int64_t r = begin; r < end; ++r) {                                                                 \
      FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) { topk_row<T, decltype(div)>(a, r, spec, buf); });    \
    }                                                                                                       \
  }                                                                                                         \
  void dense_rows(const FDivergenceArgs& a, int64_t b, int64_t e, DivergenceSpec s, T*) {                   \
    dense_rows_##SUFFIX(a, b, e, s);                                                                        \
  }                                                                                                         \
  void topk_rows(const FDivergenceTopkArgs& a, int64_t b, int64_t e, DivergenceSpec s, acc_t<T>* buf, T*) { \
    topk_rows_##SUFFIX(a, b, e, s, buf);                                                                    \
  }
FDIV_ROW_FNS(float, f32)
FDIV_ROW_FNS(double, f64)
FDIV_ROW_FNS(cpu::bf16, bf16)
FDIV_ROW_FNS(cpu::f16, f16)
#undef FDIV_ROW_FNS

// Rows are split into one contiguous block per thread (static schedule: rows cost the same).
template <typename Fn>
void parallel_rows(int64_t rows, int num_threads, Fn fn) {
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, rows)));
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t begin = rows * id / n, end = rows * (id + 1) / n;
    fn(begin, end);
  }
}

}  // namespace

void f_divergence_cpu(const FDivergenceArgs& args, int num_threads) {
  const DivergenceSpec spec = canonical_spec(args.divergence);
  FDIV_DISPATCH_FLOATING(args.dtype, cpu::bf16, cpu::f16, [&] {
    parallel_rows(args.rows, num_threads,
                  [&](int64_t b, int64_t e) { dense_rows(args, b, e, spec, static_cast<scalar_t*>(nullptr)); });
  });
}

template <typename T>
void categorical_eval(const CategoricalEvalArgs& a) {
  const T* lq = static_cast<const T*>(a.log_q);
  const T* lp = static_cast<const T*>(a.log_p);
  for (int64_t i = 0; i < a.n; ++i) {
    static_cast<T*>(a.qf_out)[i] = div_qf<M>(a.divergence, lq[i], lp[i]);
    static_cast<T*>(a.qpsi_out)[i] = div_qpsi<M>(a.divergence, lq[i], lp[i]);
  }
}

void categorical_eval_cpu(const CategoricalEvalArgs& args) {
  if (args.dtype == DType::float64)
    categorical_eval<double>(args);
  else if (args.dtype == DType::float32)
    categorical_eval<float>(args);
  else
    throw std::invalid_argument("categorical_eval: log-probabilities must be float32 or float64");
}

void f_divergence_topk_cpu(const FDivergenceTopkArgs& args, int num_threads) {
  const DivergenceSpec spec = canonical_spec(args.divergence);
  FDIV_DISPATCH_FLOATING(args.dtype, cpu::bf16, cpu::f16, [&] {
    parallel_rows(args.rows, num_threads, [&](int64_t b, int64_t e) {
      std::vector<acc_t<scalar_t>> buf(static_cast<size_t>(std::max<int64_t>(args.k, 1)));
      topk_rows(args, b, e, spec, buf.data(), static_cast<scalar_t*>(nullptr));
    });
  });
}

}  // namespace fdiv_ops
