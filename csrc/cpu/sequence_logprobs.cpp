// CPU kernels of sequence_logprobs; the formulas are in include/fdiv_ops/sequence_logprobs.h.
//
// Forward, per row: the row is consumed in blocks of kBlock elements; each block is converted to s = z/T
// into a stack buffer (L1-resident), its max found, the running (m, S, W) rescaled if the max grew, then
// e^(s - m) summed from the buffer. So the row is read from memory once, and the exp loop is a
// `#pragma omp simd` loop over VecMath::exp (vec_math.h), vectorised with AVX2/AVX-512 clones picked at run time.
// Backward, per row: one pass re-reading the row and writing the gradient.
// Bytes moved: forward rows*V*sizeof(T) read; backward rows*V*sizeof(T) read + the same written.
// Parallel over rows (OpenMP, num_threads from torch.get_num_threads()).
#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fdiv_ops/cpu_clones.h"
#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/row_moments.h"
#include "fdiv_ops/sequence_logprobs.h"
#include "fdiv_ops/vec_math.h"

namespace fdiv_ops {
namespace {

using cpu::to_float;

constexpr int64_t kBlock = 1024;  // 4 KiB of float: the block stays in L1 between its two sweeps

// The row's RowMoments (row_moments.h) block by block: the block is converted to s = z/T into buf, its
// max found (and any NaN counted), the state raised to the new max (one exp per raise), then e^(s - m)
// summed from buf: one exp per element. Blocks that hold the running max count its terms exactly (`ones`).
template <typename T, typename A, bool kEntropy>
__attribute__((always_inline)) inline RowMoments<A> row_moments_impl(const T* z, int64_t V, A inv_t) {
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  alignas(64) A buf[kBlock];
  RowMoments<A> st = RowMoments<A>::empty();
  for (int64_t begin = 0; begin < V; begin += kBlock) {
    const int64_t n = std::min(kBlock, V - begin);
    A block_max = kNegInf;
    int nans = 0;
#pragma omp simd reduction(max : block_max) reduction(+ : nans)
    for (int64_t i = 0; i < n; ++i) {
      const A s = static_cast<A>(to_float(z[begin + i])) * inv_t;
      buf[i] = s;
      block_max = block_max > s ? block_max : s;
      nans += s != s;
    }
    if (nans) {  // a NaN logit: the row is NaN (the vector max above may have dropped it)
      st.raise_max(std::numeric_limits<A>::quiet_NaN());
      return st;
    }
    st.raise_max(block_max);
    const A m = st.m;
    if (m == kNegInf) continue;  // every logit so far is -inf
    A rest = 0, ones = 0, w = 0;
    if (block_max == m) {  // this block holds the max: its e^0 = 1 terms are counted, not summed
#pragma omp simd reduction(+ : rest, ones, w)
      for (int64_t i = 0; i < n; ++i) {
        const A d = buf[i] - m;
        const A e = VecMath::exp(d);
        rest += d < A(0) ? e : A(0);
        ones += d == A(0) ? A(1) : A(0);
        if constexpr (kEntropy) w += e == A(0) ? A(0) : e * d;  // e^d d -> 0 as d -> -inf, never 0 * inf
      }
    } else {
#pragma omp simd reduction(+ : rest, w)
      for (int64_t i = 0; i < n; ++i) {
        const A d = buf[i] - m;
        const A e = VecMath::exp(d);
        rest += e;
        if constexpr (kEntropy) w += e == A(0) ? A(0) : e * d;
      }
    }
    st.rest += rest;
    st.ones += ones;
    st.w += w;
  }
  return st;
}

// dL/dz_v = inv_t [ g (1[v = y] - p_v) - g_h p_v (log p_v + H) ]; the label's term is added by the caller.
template <typename T, typename A, bool kEntropy>
__attribute__((always_inline)) inline void row_grad_impl(const T* z, int64_t V, A inv_t, A m, A log_s, A g, A g_h,
                                                         A entropy, T* out) {
  const A a = -inv_t * g, b = -inv_t * g_h;
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) {
    const A log_p = (static_cast<A>(to_float(z[v])) * inv_t - m) - log_s;
    const A p = VecMath::exp(log_p);
    A grad = a * p;
    if constexpr (kEntropy) grad += p == A(0) ? A(0) : b * p * (log_p + entropy);
    out[v] = cpu::from_float<T>(grad);
  }
}

// Non-template entry points so that target_clones can multiversion them (it does not apply to templates).
#define FDIV_ROW_FNS(T, A)                                                                                     \
  FDIV_CPU_CLONES RowMoments<A> row_moments(const T* z, int64_t V, A inv_t, bool entropy) {                    \
    return entropy ? row_moments_impl<T, A, true>(z, V, inv_t) : row_moments_impl<T, A, false>(z, V, inv_t);   \
  }                                                                                                            \
  FDIV_CPU_CLONES void row_grad(const T* z, int64_t V, A inv_t, A m, A log_s, A g, A g_h, A entropy, T* out) { \
    if (g_h != A(0))                                                                                           \
      row_grad_impl<T, A, true>(z, V, inv_t, m, log_s, g, g_h, entropy, out);                                  \
    else                                                                                                       \
      row_grad_impl<T, A, false>(z, V, inv_t, m, log_s, g, g_h, entropy, out);                                 \
  }
FDIV_ROW_FNS(float, float)
FDIV_ROW_FNS(double, double)
FDIV_ROW_FNS(cpu::bf16, float)
FDIV_ROW_FNS(cpu::f16, float)
#undef FDIV_ROW_FNS

template <typename T>
const T* row_ptr(const SeqLogprobsLayout& in, int64_t row) {
  const int64_t o = row / in.inner, i = row % in.inner;
  return static_cast<const T*>(in.logits) + o * in.outer_stride + i * in.inner_stride;
}

enum class RowKind { ignored, invalid, valid };

inline RowKind row_kind(const SeqLogprobsLayout& in, int64_t row) {
  const int64_t y = in.labels[row];
  if (y == in.ignore_index) return RowKind::ignored;
  return (y < 0 || y >= in.vocab) ? RowKind::invalid : RowKind::valid;
}

template <typename T>
void forward_impl(const SeqLogprobsArgs& a, int num_threads) {
  using A = acc_t<T>;
  const SeqLogprobsLayout& in = a.in;
  const int64_t rows = in.outer * in.inner;
  const A inv_t = A(in.inv_temperature);
  A* logp = static_cast<A*>(a.logprobs);
  A* ent = static_cast<A*>(a.entropy);
  A* stats = static_cast<A*>(a.row_stats);
  constexpr A kNaN = std::numeric_limits<A>::quiet_NaN();
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();

#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const RowKind kind = row_kind(in, r);
    A lp = 0, h = 0, m = 0, log_s = 0;
    if (kind == RowKind::invalid) {
      lp = h = kNaN;
    } else if (kind == RowKind::valid) {
      const T* z = row_ptr<T>(in, r);
      const RowMoments<A> st = row_moments(z, in.vocab, inv_t, ent != nullptr);
      m = st.m;
      if (m == kNegInf) {  // all -inf: no distribution; -inf log-prob, no gradient
        lp = kNegInf;
        log_s = kNegInf;
      } else {  // finite or NaN (a NaN logit: NaN log-prob, entropy and gradient for this row only)
        log_s = st.log_sum();
        lp = (static_cast<A>(to_float(z[in.labels[r]])) * inv_t - m) - log_s;
        h = st.entropy(log_s);
      }
    }
    logp[r] = lp;
    if (ent) ent[r] = h;
    stats[2 * r] = m;
    stats[2 * r + 1] = log_s;
  }
}

// The gradient is a fresh rows x V allocation, and first-touch page faults on it cost ~10x the kernel itself
// at V = 32000 (measured: ~200 ms of faults vs ~20 ms of compute for 4096 x 32000 fp32 on 2 cores). Asking
// the kernel for transparent huge pages (2 MiB faults instead of 4 KiB ones) on the buffer's aligned
// interior removes most of that; it is advice only, and a no-op where THP is off or unsupported.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < int64_t(4 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

template <typename T>
void backward_impl(const SeqLogprobsBackwardArgs& a, int num_threads) {
  using A = acc_t<T>;
  const SeqLogprobsLayout& in = a.in;
  const int64_t rows = in.outer * in.inner, V = in.vocab;
  const A inv_t = A(in.inv_temperature);
  const A* stats = static_cast<const A*>(a.row_stats);
  const A* ent = static_cast<const A*>(a.entropy);
  const A* g_lp = static_cast<const A*>(a.grad_logprobs);
  const A* g_ent = static_cast<const A*>(a.grad_entropy);
  T* out_all = static_cast<T*>(a.grad_logits);
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  advise_huge_pages(out_all, rows * V * int64_t(sizeof(T)));

#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    T* out = out_all + r * V;
    const A m = stats[2 * r], log_s = stats[2 * r + 1];
    if (row_kind(in, r) != RowKind::valid || m == kNegInf) {
      std::fill(out, out + V, cpu::from_float<T>(A(0)));
      continue;
    }
    const A g = g_lp ? g_lp[r] : A(0);
    const A g_h = g_ent ? g_ent[r] : A(0);
    const A h = (g_ent && ent) ? ent[r] : A(0);
    const T* z = row_ptr<T>(in, r);
    row_grad(z, V, inv_t, m, log_s, g, g_h, h, out);
    // The label's entry, recomputed in full precision rather than patched onto a rounded value.
    const int64_t y = in.labels[r];
    const A log_p = (static_cast<A>(to_float(z[y])) * inv_t - m) - log_s;
    const A p = std::exp(log_p);
    A grad = -inv_t * g * std::expm1(log_p);  // 1 - p without cancellation when p -> 1
    if (g_h != A(0) && p != A(0)) grad -= inv_t * g_h * p * (log_p + h);
    out[y] = cpu::from_float<T>(grad);
  }
}

}  // namespace

void seq_logprobs_cpu(const SeqLogprobsArgs& args, int num_threads) {
  FDIV_DISPATCH_FLOATING(args.in.dtype, cpu::bf16, cpu::f16, [&] { forward_impl<scalar_t>(args, num_threads); });
}

void seq_logprobs_backward_cpu(const SeqLogprobsBackwardArgs& args, int num_threads) {
  FDIV_DISPATCH_FLOATING(args.in.dtype, cpu::bf16, cpu::f16, [&] { backward_impl<scalar_t>(args, num_threads); });
}

}  // namespace fdiv_ops
