// CPU kernels of sequence_logprobs; the formulas are in include/fdiv_ops/sequence_logprobs.h, the online row
// state (max, sum with the max terms counted exactly, entropy moment) in include/fdiv_ops/row_moments.h.
//
// Forward, per row: the row is consumed in blocks of kBlock elements; each block is converted to s = z/T
// into a stack buffer (L1-resident), its max found (and NaNs counted), the row state raised to the new max,
// then e^(s - m) summed from the buffer. So the row is read from memory once, and the exp loop is a
// `#pragma omp simd` loop over exp_nonpos (below), vectorised with AVX2/AVX-512 clones picked at run time.
// Backward, per row: one pass re-reading the row and writing the gradient.
// Transcendentals per element: forward 1 exp (plus 1 per block whose max raises the row's, and 1 log1p per
// row); backward 1 exp (plus 1 exp and 1 expm1 per row for the label's entry). The entropy adds none.
// Instructions per element (callgrind, AVX2 clone, 64 x 32000 fp32, forward + backward): 11.7 before the
// exp_nonpos/RowMoments rewrite, 8.1 after.
// Bytes moved: forward rows*V*sizeof(T) read; backward rows*V*sizeof(T) read + the same written.
// Parallel over rows (OpenMP, num_threads from torch.get_num_threads()), in dynamic jobs of ~64 Ki elements.
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

// e^d for d <= 0, the only exponentials these loops take (d = s - m, or log p): vec_math.h's exp without the
// overflow and NaN selects it needs for arbitrary x (19 vector operations instead of 25). Cody-Waite range
// reduction d = n ln2 + r, |r| <= ln2/2, and the same Cephes polynomial for e^r, so the accuracy is vec::exp's
// (~1-2 ulp). d < -87.34 (and -inf) gives 0 (no denormal results); NaN propagates through r.
inline __attribute__((always_inline)) float exp_nonpos(float d) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  constexpr float kMin = -87.33654f;     // log(2^-126)
  const float dc = d < kMin ? kMin : d;
  const float t = dc * kLog2e + kShift;
  const int32_t n = vec::as_int(t) - vec::as_int(kShift);  // in [-126, 0]
  const float fn = t - kShift;
  const float r = (dc - fn * kLn2Hi) - fn * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = (p * r) * r + r + 1.0f;
  const float y = e * vec::as_float((n + 127) << 23);
  return d < kMin ? 0.0f : y;
}
inline __attribute__((always_inline)) double exp_nonpos(double d) { return std::exp(d); }

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
        const A e = exp_nonpos(d);
        rest += d < A(0) ? e : A(0);
        ones += d == A(0) ? A(1) : A(0);
        if constexpr (kEntropy) w += e == A(0) ? A(0) : e * d;  // e^d d -> 0 as d -> -inf, never 0 * inf
      }
    } else {
#pragma omp simd reduction(+ : rest, w)
      for (int64_t i = 0; i < n; ++i) {
        const A d = buf[i] - m;
        const A e = exp_nonpos(d);
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
    const A p = exp_nonpos(log_p);
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

// Threads take rows in jobs of ~64 Ki elements (dynamic schedule): on a shared machine a descheduled thread
// then holds back one job, not half of the rows (a static split made 2 threads 3x slower than 1 under load).
// Below kParallelMinElems in all, the work is smaller than waking a thread team: stay on the calling thread.
constexpr int64_t kJobElems = 1 << 16, kParallelMinElems = 1 << 16;
inline int64_t rows_per_job(int64_t vocab) { return std::max<int64_t>(1, kJobElems / std::max<int64_t>(1, vocab)); }

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
  const int64_t rows_per_chunk = rows_per_job(in.vocab);

#pragma omp parallel for num_threads(num_threads) \
    schedule(dynamic, rows_per_chunk) if (rows * in.vocab >= kParallelMinElems)
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

// The gradient is a fresh rows x V allocation (torch's CPU allocator maps large blocks anew on every call), and
// first-touch page faults on it cost more than the kernel itself: 64 Ki faults of 4 KiB for 2048 x 32000
// fp32. Each job asks the kernel to map and zero its own rows first (MADV_POPULATE_WRITE, Linux 5.14+: one
// call, no trap per page), so the zeroing runs on every thread and the rows are still in cache when the
// gradient overwrites them. Measured on the shared 2-core machine, backward of 2048 x 32000 fp32 alongside
// other allocations: ~300 ms faulting, ~150-230 ms populating. (Transparent huge pages were tried: 2x
// faster alone, but 2-5x slower once other allocations had fragmented memory, so they are not asked for.)
// Advice only: where the call is unsupported the pages fault in as before.
void populate_for_write(void* data, int64_t bytes) {
#if defined(__linux__)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  constexpr uintptr_t kPage = 4096;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + uintptr_t(bytes)) & ~(kPage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
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
  const int64_t job_rows = rows_per_job(V), jobs = (rows + job_rows - 1) / job_rows;

#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1) if (rows * V >= kParallelMinElems)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t first = job * job_rows, last = std::min(rows, first + job_rows);
    populate_for_write(out_all + first * V, (last - first) * V * int64_t(sizeof(T)));
    for (int64_t r = first; r < last; ++r) {
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
}

}  // namespace

void seq_logprobs_cpu(const SeqLogprobsArgs& args, int num_threads) {
  FDIV_DISPATCH_FLOATING(args.in.dtype, cpu::bf16, cpu::f16, [&] { forward_impl<scalar_t>(args, num_threads); });
}

void seq_logprobs_backward_cpu(const SeqLogprobsBackwardArgs& args, int num_threads) {
  FDIV_DISPATCH_FLOATING(args.in.dtype, cpu::bf16, cpu::f16, [&] { backward_impl<scalar_t>(args, num_threads); });
}

}  // namespace fdiv_ops
