// CPU kernel of f_distill_loss; the formula and the passes are in include/fdiv_ops/f_distill.h, the
// per-sample arithmetic (double, log-space h) in include/fdiv_ops/f_distill_math.h.
// No exp/log per element: the inner loops are subtractions, |.|, fused multiply-adds and the gradient's
// multiply; exp/log run once per sample (its weight) only.
// Bytes moved: pass 1 reads x, teacher_x0, fake_x0; pass 2 re-reads teacher_x0 and fake_x0 and writes the
// gradient. Samples of up to 32 Ki elements run sample-major (pass 2 right after pass 1, re-reading from
// cache); larger samples, or fewer samples than threads, run as (sample, chunk) jobs so that B = 1 still
// uses every core. Inner loops are vectorised, with AVX2/AVX-512 clones picked at run time so the wheel
// still runs on a baseline x86-64.
// Overflow: the sums run in the accumulation dtype (fast); a sample whose sums overflow although its
// inputs are finite (|fake - teacher| near 1e20 squares past float32's range) is summed again, scaled, in
// double. That cold path changes nothing for NaN/inf inputs, which keep their NaN/inf sums.
#include <algorithm>
#include <cmath>

#include "fdiv_ops/cpu_clones.h"
#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_distill.h"

namespace fdiv_ops {
namespace {

using cpu::to_float;

template <typename T, typename A>
__attribute__((always_inline)) inline void chunk_sums_impl(const T* x, const T* t, const T* f, int64_t n, A* abs_sum,
                                                           A* sq_sum) {
  A sa = 0, ss = 0;
#pragma omp simd reduction(+ : sa, ss)
  for (int64_t i = 0; i < n; ++i) {
    A tv = static_cast<A>(to_float(t[i]));
    A d = static_cast<A>(to_float(f[i])) - tv;
    sa += std::fabs(static_cast<A>(to_float(x[i])) - tv);
    ss += d * d;
  }
  *abs_sum = sa;
  *sq_sum = ss;
}

template <typename T, typename A>
__attribute__((always_inline)) inline void chunk_grad_impl(const T* t, const T* f, int64_t n, A w, T* g) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    A d = static_cast<A>(to_float(f[i])) - static_cast<A>(to_float(t[i]));
    g[i] = cpu::from_float<T>(w * d);
  }
}

// Non-template entry points so that target_clones can multiversion them (it does not apply to templates).
#define FDIV_CHUNK_FNS(T, A)                                                                     \
  FDIV_CPU_CLONES void chunk_sums(const T* x, const T* t, const T* f, int64_t n, A* sa, A* ss) { \
    chunk_sums_impl<T, A>(x, t, f, n, sa, ss);                                                   \
  }                                                                                              \
  FDIV_CPU_CLONES void chunk_grad(const T* t, const T* f, int64_t n, A w, T* g) {                \
    chunk_grad_impl<T, A>(t, f, n, w, g);                                                        \
  }
FDIV_CHUNK_FNS(float, float)
FDIV_CHUNK_FNS(double, double)
FDIV_CHUNK_FNS(cpu::bf16, float)
FDIV_CHUNK_FNS(cpu::f16, float)
#undef FDIV_CHUNK_FNS

inline bool finite(double v) { return v - v == 0.0; }  // false for inf and NaN

// The cold path: sum |x - t| and ||f - t|| of one sample in double, each scaled by its largest term so
// that nothing overflows. Where that largest term is not finite (inf/NaN inputs) the fast sums are kept.
template <typename T>
void scaled_sums(const T* x, const T* t, const T* f, int64_t n, double* abs_sum, double* diff_norm) {
  double max_abs = 0, max_diff = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double tv = to_float(t[i]);
    max_abs = nan_max(max_abs, std::fabs(double(to_float(x[i])) - tv));
    max_diff = nan_max(max_diff, std::fabs(double(to_float(f[i])) - tv));
  }
  double sa = 0, ss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double tv = to_float(t[i]);
    if (max_abs > 0) sa += std::fabs(double(to_float(x[i])) - tv) / max_abs;
    if (max_diff > 0) {
      const double d = (double(to_float(f[i])) - tv) / max_diff;
      ss += d * d;
    }
  }
  if (finite(max_abs)) *abs_sum = max_abs * sa;
  if (finite(max_diff)) *diff_norm = max_diff * std::sqrt(ss);
}

// Below this many elements the work (~tens of microseconds) is smaller than waking and joining a thread
// team, which on a loaded machine can cost milliseconds: stay on the calling thread. Above it, threads take
// jobs of ~64 Ki elements (dynamic schedule), so a thread descheduled on a shared machine holds back one job,
// not a static half of the batch.
constexpr int64_t kParallelMinElems = 1 << 16, kJobElems = 1 << 16;

template <typename T>
void f_distill_impl(const FDistillArgs& a, int num_threads) {
  using A = acc_t<T>;
  const int64_t B = a.batch, D = a.dim, chunk = kFDistillChunkCpu;
  const int64_t nchunks = f_distill_num_chunks(D, false), jobs = B * nchunks;
  const T* x = static_cast<const T*>(a.x);
  const T* t = static_cast<const T*>(a.teacher_x0);
  const T* f = static_cast<const T*>(a.fake_x0);
  T* g = static_cast<T*>(a.grad);
  double* partial = static_cast<double*>(a.workspace);  // (abs, sq) per job
  double* per_sample = partial + 2 * jobs;              // (grad scale, loss) per sample
  A* norm_out = static_cast<A*>(a.normalizer_out);
  A* weight_out = static_cast<A*>(a.weight_out);
  A* sample_loss = static_cast<A*>(a.sample_loss);
  const A* log_h = static_cast<const A*>(a.h);
  const double log_den = f_distill_log_denominator(static_cast<const A*>(a.h_stats));
  const bool parallel = B * D >= kParallelMinElems;
  const int64_t samples_per_job = std::max<int64_t>(1, kJobElems / D),
                chunks_per_job = std::max<int64_t>(1, kJobElems / chunk);

  // Sample b's sums -> its outputs; per_sample[2b] = the gradient scale, per_sample[2b + 1] = its loss.
  auto finish = [&](int64_t b, double abs_sum, double sq_sum) {
    double diff_norm = std::sqrt(sq_sum);
    if (!finite(abs_sum) || !finite(sq_sum)) scaled_sums(x + b * D, t + b * D, f + b * D, D, &abs_sum, &diff_norm);
    const FDistillSample<A> s = f_distill_sample(abs_sum, diff_norm, log_h, b, log_den, D, a.eps, a.scale);
    norm_out[b] = s.normalizer;
    weight_out[b] = s.weight;
    if (sample_loss) sample_loss[b] = s.sample_loss;
    per_sample[2 * b] = s.grad_scale;
    per_sample[2 * b + 1] = s.sample_loss;
    return s.grad_scale;
  };

  if (nchunks == 1 && B >= num_threads) {
    // Sample-major: each sample's second pass follows its first while teacher and fake are still in cache,
    // and one parallel region does it all.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, samples_per_job) if (parallel)
    for (int64_t b = 0; b < B; ++b) {
      A abs_sum, sq_sum;
      chunk_sums(x + b * D, t + b * D, f + b * D, D, &abs_sum, &sq_sum);
      chunk_grad(t + b * D, f + b * D, D, finish(b, abs_sum, sq_sum), g + b * D);
    }
  } else {
    // Chunk-major: (sample, chunk) jobs so that a few large samples still use every core.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, chunks_per_job) if (parallel)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t b = job / nchunks, begin = (job % nchunks) * chunk, off = b * D + begin;
      A abs_sum, sq_sum;
      chunk_sums(x + off, t + off, f + off, std::min(chunk, D - begin), &abs_sum, &sq_sum);
      partial[2 * job] = abs_sum;
      partial[2 * job + 1] = sq_sum;
    }
    for (int64_t b = 0; b < B; ++b) {
      double abs_sum = 0, sq_sum = 0;  // chunk order: deterministic
      for (int64_t c = 0; c < nchunks; ++c) {
        abs_sum += partial[2 * (b * nchunks + c)];
        sq_sum += partial[2 * (b * nchunks + c) + 1];
      }
      finish(b, abs_sum, sq_sum);
    }
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, chunks_per_job) if (parallel)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t b = job / nchunks, begin = (job % nchunks) * chunk, off = b * D + begin;
      chunk_grad(t + off, f + off, std::min(chunk, D - begin), A(per_sample[2 * b]), g + off);
    }
  }
  double total = 0;  // sample order: deterministic whatever the thread count
  for (int64_t b = 0; b < B; ++b) total += per_sample[2 * b + 1];
  static_cast<A*>(a.loss)[0] = A(total);
}

template <typename L, typename A>
void weights_impl(const FDistillWeightsArgs& a) {
  const L* logits = static_cast<const L*>(a.logits);
  const A* divisor = static_cast<const A*>(a.ratio_divisor);
  A* r_out = static_cast<A*>(a.ratio_out);
  A* h_out = static_cast<A*>(a.h_out);
  const double c = f_distill_h_log_scale<A>(a.divergence, a.ratio_lo, a.ratio_hi);
  double h_sum = 0, count = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    double mean = 0;
    for (int64_t k = 0; k < a.heads; ++k) mean += to_float(logits[b * a.heads + k]);
    mean /= double(a.heads);
    const double l = clamp_keep_nan(mean, -a.logit_clamp, a.logit_clamp);
    double r = clamp_keep_nan(std::exp(l), a.ratio_lo, a.ratio_hi);
    if (divisor) r /= double(divisor[b]);
    const double log_h = f_distill_log_h(a.divergence, std::log(r));
    r_out[b] = A(r);
    h_out[b] = A(log_h);
    if (log_h == log_h) {  // a NaN sample is NaN itself, and left out of everyone else's mean
      h_sum += std::exp(log_h - c);
      count += 1;
    }
  }
  static_cast<A*>(a.h_stats_out)[0] = A(h_sum);
  static_cast<A*>(a.h_stats_out)[1] = A(count * std::exp(-c));
}

}  // namespace

void f_distill_cpu(const FDistillArgs& args, int num_threads) {
  FDIV_DISPATCH_FLOATING(args.dtype, cpu::bf16, cpu::f16, [&] { f_distill_impl<scalar_t>(args, num_threads); });
}

void f_distill_weights_cpu(const FDistillWeightsArgs& args) {
  FDIV_DISPATCH_FLOATING(args.logits_dtype, cpu::bf16, cpu::f16, [&] {
    if (args.acc_dtype == DType::float64)
      weights_impl<scalar_t, double>(args);
    else
      weights_impl<scalar_t, float>(args);
  });
}

}  // namespace fdiv_ops
