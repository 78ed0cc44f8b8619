// CPU kernels of the vocabulary-parallel ops (the phases and formulas: include/fdiv_ops/vocab_parallel.h). One
// OpenMP thread per block of rows; every per-entry loop is `#pragma omp simd` over the shard's columns.
// Transcendentals per entry (student and teacher logits): phase 1 2 exp (one per side, after a max pass that
// reads the row from memory; the exp pass finds it in L2); phase 2 2 exp + the divergence's categorical form;
// phase 3 the same again (q, p and q psi~ are recomputed rather than stored: no rows x V scratch, and the gradient
// may overwrite the student's logits in place). So a rank does ~2x the arithmetic of the unsharded kernel on its
// 1/world of the vocabulary, and reads each row three times (phase 1 twice from L2) and writes the gradient once.
// Row sums: the accumulation type within blocks of 512 entries (so the loops vectorise), float64 across blocks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <omp.h>

#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/vec_math.h"
#include "fdiv_ops/vocab_parallel.h"

namespace fdiv_ops {
namespace {

using cpu::to_float;
using M = VecMath;
constexpr int64_t kBlock = 512;

template <typename T>
using Acc = acc_t<T>;

template <typename T>
inline __attribute__((always_inline)) Acc<T> ld(const T* x, int64_t j) {
  return static_cast<Acc<T>>(to_float(x[j]));
}

template <typename Fn>
void parallel_rows(int64_t rows, int num_threads, Fn fn) {
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, rows)));
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), n = omp_get_num_threads();
    for (int64_t r = rows * id / n, end = rows * (id + 1) / n; r < end; ++r) fn(r);
  }
}

template <typename T>
void row_stats_rows(const VpRowStatsArgs& a, int64_t r) {
  using A = Acc<T>;
  const T* z = static_cast<const T*>(a.logits) + r * a.vocab;
  A* out = static_cast<A*>(a.stats) + r * a.stride + a.col;
  const A scale = A(a.scale);
  const int64_t v = a.vocab;
  A m = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < v; ++j) m = poison_max(m, ld(z, j) * scale);
  double s = 0, w = 0;
  if (!(m == -std::numeric_limits<A>::infinity()) && !row_poisoned(m)) {
    for (int64_t b0 = 0; b0 < v; b0 += kBlock) {
      const int64_t b1 = std::min(v, b0 + kBlock);
      A bs = 0, bw = 0;
      if (a.with_moment) {
#pragma omp simd reduction(+ : bs, bw)
        for (int64_t j = b0; j < b1; ++j) {
          const A d = ld(z, j) * scale - m;
          const A e = M::exp(d);
          bs += e;
          bw += d > -std::numeric_limits<A>::infinity() ? e * d : A(0);
        }
      } else {
#pragma omp simd reduction(+ : bs)
        for (int64_t j = b0; j < b1; ++j) bs += M::exp(ld(z, j) * scale - m);
      }
      s += double(bs);
      w += double(bw);
    }
  }
  out[0] = m;
  out[1] = A(s);
  if (a.with_moment) out[2] = A(w);
}

template <typename T, typename Div>
void kd_partial(const VpKdArgs& a, const DivergenceSpec& spec, int num_threads) {
  using A = Acc<T>;
  const CatParam<A> param = make_cat_param(A(spec.param));
  const CatSeries<A> series = make_cat_series<A>(spec);
  const A c1 = div_c1<A>(spec);
  const int64_t vs = a.vs, vt = a.vt, vc = std::min(vs, vt);
  const bool hard = a.labels != nullptr;
  parallel_rows(a.rows, num_threads, [&](int64_t r) {
    A* out = static_cast<A*>(a.partial) + r;
    const int64_t plane = a.rows;
    const A scale = static_cast<const A*>(a.row_scale)[r];
    const double* lse = a.lse + 3 * r;
    const int64_t y = hard ? a.labels[r] : -1;
    if (vp_row_state<A>(scale, lse[0], lse[1], lse[2]) != 0) {
      out[0] = out[plane] = out[2 * plane] = A(0);
      return;
    }
    const T* z = static_cast<const T*>(a.student) + r * vs;
    const T* t = static_cast<const T*>(a.teacher) + r * vt;
    const VpRow<A> rs = vp_row<A>(a, lse[0], lse[1]);
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
#pragma omp simd reduction(+ : tail_q)
    for (int64_t j = vc; j < vs; ++j) tail_q += double(M::exp(ld(z, j) * rs.inv_t - rs.lse_z));
#pragma omp simd reduction(+ : tail_p)
    for (int64_t j = vc; j < vt; ++j) tail_p += double(M::exp(ld(t, j) * rs.t_scale - rs.lse_t));
    out[0] = A(loss + double(c1) * (tail_q - tail_p));
    out[plane] = A(s + double(c1) * tail_q);
    out[2 * plane] = (hard && y >= 0 && y < vs) ? ld(z, y) : A(0);
  });
}

template <typename T, typename Div>
void kd_grad(const VpKdArgs& a, const DivergenceSpec& spec, int num_threads) {
  using A = Acc<T>;
  const CatParam<A> param = make_cat_param(A(spec.param));
  const CatSeries<A> series = make_cat_series<A>(spec);
  const A c1 = div_c1<A>(spec);
  const int64_t vs = a.vs, vt = a.vt, vc = std::min(vs, vt);
  const bool hard = a.labels != nullptr;
  const A nan = std::numeric_limits<A>::quiet_NaN();
  parallel_rows(a.rows, num_threads, [&](int64_t r) {
    const A scale = static_cast<const A*>(a.row_scale)[r];
    const double* lse = a.lse + 3 * r;
    const A* tot = static_cast<const A*>(a.totals) + r;
    const int64_t plane = a.rows;
    A* loss_out = static_cast<A*>(a.row_loss) + r;
    T* g = static_cast<T*>(a.grad) + r * vs;
    const int64_t y = hard ? a.labels[r] : -1;
    const int state = vp_row_state<A>(scale, lse[0], lse[1], lse[2]);
    if (state != 0) {
      const A fill = state == 2 ? nan : A(0);
      *loss_out = fill;
      const T v = cpu::from_float<T>(fill);
      for (int64_t j = 0; j < vs; ++j) g[j] = v;
      return;
    }
    const T* z = static_cast<const T*>(a.student) + r * vs;
    const T* t = static_cast<const T*>(a.teacher) + r * vt;
    const VpRow<A> rs = vp_row<A>(a, lse[0], lse[1]);
    const A s = finite_or_nan(tot[plane]);
    const A coef = scale * rs.inv_t, hard_coef = hard ? scale * A(a.hard_weight) : A(0), lse_1 = A(lse[2]);
    const int64_t yl = y;
#pragma omp simd
    for (int64_t j = 0; j < vc; ++j) {
      const A zj = ld(z, j);
      A q, p, qf, qpsi;
      bool keep;
      vp_entry<Div, M>(zj, ld(t, j), rs, param, series, c1, &q, &p, &qf, &qpsi, &keep);
      A gj = coef * (qpsi - q * s);
      if (hard) gj += hard_coef * (M::exp(zj - lse_1) - (j == yl ? A(1) : A(0)));
      g[j] = cpu::from_float<T>(gj);
    }
    const A tail = coef * (c1 - s);
#pragma omp simd
    for (int64_t j = vc; j < vs; ++j) {
      const A zj = ld(z, j);
      A gj = M::exp(zj * rs.inv_t - rs.lse_z) * tail;
      if (hard) gj += hard_coef * (M::exp(zj - lse_1) - (j == yl ? A(1) : A(0)));
      g[j] = cpu::from_float<T>(gj);
    }
    *loss_out =
        A(double(scale) * vp_row_loss(a, double(c1), lse[1], lse[2], double(tot[0]), double(tot[2 * plane]), hard));
  });
}

template <typename T>
void seq_grad(const VpSeqGradArgs& a, int num_threads) {
  using A = Acc<T>;
  parallel_rows(a.rows, num_threads, [&](int64_t r) {
    T* g = static_cast<T*>(a.grad) + r * a.vocab;
    const int64_t yl = a.local_label[r];
    const double lse = a.lse[r];
    const A gl = a.grad_logprobs ? static_cast<const A*>(a.grad_logprobs)[r] : A(0);
    const A gh = a.grad_entropy ? static_cast<const A*>(a.grad_entropy)[r] : A(0);
    if (yl == -2 || is_neg_inf(lse)) {  // ignored, or a row of -inf: no gradient
      for (int64_t j = 0; j < a.vocab; ++j) g[j] = cpu::from_float<T>(A(0));
      return;
    }
    const T* z = static_cast<const T*>(a.logits) + r * a.vocab;
    const A inv_t = A(a.inv_temperature), lz = A(lse), h = a.entropy ? A(a.entropy[r]) : A(0);
#pragma omp simd
    for (int64_t j = 0; j < a.vocab; ++j) {
      const A lp = ld(z, j) * inv_t - lz;
      const A p = M::exp(lp);
      A gj = gl * ((j == yl ? A(1) : A(0)) - p);
      if (a.grad_entropy) gj -= gh * (p > A(0) ? p * (lp + h) : A(0));
      g[j] = cpu::from_float<T>(inv_t * gj);
    }
  });
}

template <typename Fn>
void by_dtype(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::float32:
      return fn(float{});
    case DType::float64:
      return fn(double{});
    case DType::bfloat16:
      return fn(cpu::bf16{});
    case DType::float16:
      return fn(cpu::f16{});
  }
}

}  // namespace

void vp_row_stats_cpu(const VpRowStatsArgs& args, int num_threads) {
  by_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(args.rows, num_threads, [&](int64_t r) { row_stats_rows<T>(args, r); });
  });
}

void vp_kd_partial_cpu(const VpKdArgs& args, int num_threads) {
  const DivergenceSpec spec = canonical_spec(args.divergence);
  by_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    FDIV_DIVERGENCE_SWITCH(spec.kind,
                           [&](auto div) { return kd_partial<T, decltype(div)>(args, spec, num_threads), 0; });
  });
}

void vp_kd_grad_cpu(const VpKdArgs& args, int num_threads) {
  const DivergenceSpec spec = canonical_spec(args.divergence);
  by_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) { return kd_grad<T, decltype(div)>(args, spec, num_threads), 0; });
  });
}

void vp_seq_grad_cpu(const VpSeqGradArgs& args, int num_threads) {
  by_dtype(args.dtype, [&](auto tag) { seq_grad<decltype(tag)>(args, num_threads); });
}

}  // namespace fdiv_ops
