// CPU entry points of the vocabulary-parallel ops (the phases and formulas: include/fdiv_ops/vocab_parallel.h):
// phase 1 (row statistics) and the sequence_logprobs backward here, phases 2 and 3 in kd_rows.h. One OpenMP
// thread per block of rows; every per-entry loop is `#pragma omp simd` over the shard's columns, inside
// multiversioned (target_clones) functions.
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

#include "kd_rows.h"

namespace fdiv_ops {
namespace {

using vp_cpu::kBlock;
using vp_cpu::ld;
using vp_cpu::M;

template <typename T>
using Acc = acc_t<T>;

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
FDIV_VP_INLINE void row_stats_row(const VpRowStatsArgs& a, int64_t r) {
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

template <typename T>
FDIV_VP_INLINE void seq_grad_row(const VpSeqGradArgs& a, int64_t r) {
  using A = Acc<T>;
  {
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
    const int64_t v = a.vocab;
    if (a.grad_entropy == nullptr) {  // two loops: a select on a loop invariant would leave the loop scalar
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) {
        const A p = M::exp(ld(z, j) * inv_t - lz);
        g[j] = cpu::from_float<T>(inv_t * gl * ((j == yl ? A(1) : A(0)) - p));
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) {
        const A lp = ld(z, j) * inv_t - lz;
        const A p = M::exp(lp);
        const A gj = gl * ((j == yl ? A(1) : A(0)) - p) - gh * (p > A(0) ? p * (lp + h) : A(0));
        g[j] = cpu::from_float<T>(inv_t * gj);
      }
    }
  }
}

// The multiversioned row functions of phase 1 and of the sequence_logprobs backward, one per dtype.
#define FDIV_VP_ROW_ENTRY(SUFFIX, T)                                                                      \
  FDIV_CPU_CLONES void row_stats_##SUFFIX(const VpRowStatsArgs& a, int64_t r) { row_stats_row<T>(a, r); } \
  FDIV_CPU_CLONES void seq_grad_##SUFFIX(const VpSeqGradArgs& a, int64_t r) { seq_grad_row<T>(a, r); }
FDIV_VP_ROW_ENTRY(f32, float)
FDIV_VP_ROW_ENTRY(f64, double)
FDIV_VP_ROW_ENTRY(bf16, cpu::bf16)
FDIV_VP_ROW_ENTRY(f16, cpu::f16)
#undef FDIV_VP_ROW_ENTRY

template <typename T>
void run_kd(const VpKdArgs& args, int num_threads, bool grad,
            void (*tables)(const vp_cpu::PartialFn<T>**, const vp_cpu::PartialFn<T>**)) {
  using A = Acc<T>;
  const DivergenceSpec spec = canonical_spec(args.divergence);
  const vp_cpu::Setup<A> setup{make_cat_param(A(spec.param)), make_cat_series<A>(spec), div_c1<A>(spec)};
  const vp_cpu::PartialFn<T>* partial;
  const vp_cpu::PartialFn<T>* grads;
  tables(&partial, &grads);
  const vp_cpu::PartialFn<T> fn = (grad ? grads : partial)[static_cast<int>(spec.kind)];
  parallel_rows(args.rows, num_threads, [&](int64_t r) { fn(args, setup, r); });
}

void run_kd_any(const VpKdArgs& args, int num_threads, bool grad) {
  switch (args.dtype) {
    case DType::float32:
      return run_kd<float>(args, num_threads, grad, vp_cpu::kd_tables_f32);
    case DType::float64:
      return run_kd<double>(args, num_threads, grad, vp_cpu::kd_tables_f64);
    case DType::bfloat16:
      return run_kd<cpu::bf16>(args, num_threads, grad, vp_cpu::kd_tables_bf16);
    case DType::float16:
      return run_kd<cpu::f16>(args, num_threads, grad, vp_cpu::kd_tables_f16);
  }
}

template <typename Args, typename F32, typename F64, typename BF16, typename F16>
void run_rows(const Args& args, DType dtype, int num_threads, F32 f32, F64 f64, BF16 bf16, F16 f16) {
  switch (dtype) {
    case DType::float32:
      return parallel_rows(args.rows, num_threads, [&](int64_t r) { f32(args, r); });
    case DType::float64:
      return parallel_rows(args.rows, num_threads, [&](int64_t r) { f64(args, r); });
    case DType::bfloat16:
      return parallel_rows(args.rows, num_threads, [&](int64_t r) { bf16(args, r); });
    case DType::float16:
      return parallel_rows(args.rows, num_threads, [&](int64_t r) { f16(args, r); });
  }
}

}  // namespace

void vp_row_stats_cpu(const VpRowStatsArgs& args, int num_threads) {
  run_rows(args, args.dtype, num_threads, row_stats_f32, row_stats_f64, row_stats_bf16, row_stats_f16);
}

void vp_kd_partial_cpu(const VpKdArgs& args, int num_threads) { run_kd_any(args, num_threads, false); }

void vp_kd_grad_cpu(const VpKdArgs& args, int num_threads) { run_kd_any(args, num_threads, true); }

void vp_seq_grad_cpu(const VpSeqGradArgs& args, int num_threads) {
  run_rows(args, args.dtype, num_threads, seq_grad_f32, seq_grad_f64, seq_grad_bf16, seq_grad_f16);
}

}  // namespace fdiv_ops
