// CPU kernel of f_distill_loss; the formula and the passes are in include/fdiv_ops/f_distill.h.
// Bytes moved: pass 1 reads x, teacher_x0, fake_x0; pass 2 re-reads teacher_x0 and fake_x0 and writes the
// gradient. Samples of up to 32 Ki elements run sample-major (pass 2 right after pass 1, re-reading from
// cache); larger samples, or fewer samples than threads, run as (sample, chunk) jobs so that B = 1 still
// uses every core. Inner loops are vectorised, with AVX2/AVX-512 clones picked at run time so the wheel
// still runs on a baseline x86-64.
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

template <typename A>
struct SampleWeight {
  const A* h;
  A h_den, eps, scale;
  int64_t dim;
  // w_b = h_b / (n_b + eps), with h_b normalised by the batch mean (math.md §2)
  A operator()(int64_t b, A abs_sum, A* norm_out, A* weight_out) const {
    const A n_b = abs_sum / A(dim);
    const A h_b = h ? h[b] / h_den : A(1);
    norm_out[b] = n_b;
    weight_out[b] = h_b;
    return h_b / (n_b + eps);
  }
};

// Below this many elements the work (~tens of microseconds) is smaller than waking and joining a thread
// team, which on a loaded machine can cost milliseconds: stay on the calling thread.
constexpr int64_t kParallelMinElems = 1 << 16;

template <typename T>
void f_distill_impl(const FDistillArgs& a, int num_threads) {
  using A = acc_t<T>;
  const int64_t B = a.batch, D = a.dim, chunk = kFDistillChunkCpu;
  const int64_t nchunks = f_distill_num_chunks(D, false), jobs = B * nchunks;
  const T* x = static_cast<const T*>(a.x);
  const T* t = static_cast<const T*>(a.teacher_x0);
  const T* f = static_cast<const T*>(a.fake_x0);
  T* g = static_cast<T*>(a.grad);
  A* partial = static_cast<A*>(a.workspace);
  A* grad_scale = partial + 2 * jobs;
  A* norm_out = static_cast<A*>(a.normalizer_out);
  A* weight_out = static_cast<A*>(a.weight_out);
  const A* stats = static_cast<const A*>(a.h_stats);
  const bool parallel = B * D >= kParallelMinElems;
  const SampleWeight<A> weight{static_cast<const A*>(a.h), stats ? stats[0] / stats[1] + A(1e-6) : A(1), A(a.eps),
                               A(a.scale), D};

  if (nchunks == 1 && B >= num_threads) {
    // Sample-major: each sample's second pass follows its first while teacher and fake are still in cache,
    // and one parallel region does it all. partial[2b + 1] keeps w_b^2 S_b for the deterministic loss sum.
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t b = 0; b < B; ++b) {
      A abs_sum, sq_sum;
      chunk_sums(x + b * D, t + b * D, f + b * D, D, &abs_sum, &sq_sum);
      const A w_b = weight(b, abs_sum, norm_out, weight_out);
      partial[2 * b + 1] = w_b * w_b * sq_sum;
      chunk_grad(t + b * D, f + b * D, D, weight.scale * w_b, g + b * D);
    }
  } else {
    // Chunk-major: (sample, chunk) jobs so that a few large samples still use every core.
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t b = job / nchunks, begin = (job % nchunks) * chunk, off = b * D + begin;
      chunk_sums(x + off, t + off, f + off, std::min(chunk, D - begin), &partial[2 * job], &partial[2 * job + 1]);
    }
    for (int64_t b = 0; b < B; ++b) {
      A abs_sum = 0, sq_sum = 0;
      for (int64_t c = 0; c < nchunks; ++c) {
        abs_sum += partial[2 * (b * nchunks + c)];
        sq_sum += partial[2 * (b * nchunks + c) + 1];
      }
      const A w_b = weight(b, abs_sum, norm_out, weight_out);
      grad_scale[b] = weight.scale * w_b;
      partial[2 * (b * nchunks) + 1] = w_b * w_b * sq_sum;
    }
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t b = job / nchunks, begin = (job % nchunks) * chunk, off = b * D + begin;
      chunk_grad(t + off, f + off, std::min(chunk, D - begin), grad_scale[b], g + off);
    }
  }
  A total = 0;
  for (int64_t b = 0; b < B; ++b) total += partial[2 * (b * nchunks) + 1];
  static_cast<A*>(a.loss)[0] = A(0.5) * weight.scale * total;
}

template <typename L, typename A>
void weights_impl(const FDistillWeightsArgs& a) {
  const L* logits = static_cast<const L*>(a.logits);
  const A* divisor = static_cast<const A*>(a.ratio_divisor);
  A* r_out = static_cast<A*>(a.ratio_out);
  A* h_out = static_cast<A*>(a.h_out);
  const A param = A(a.divergence.param);
  A h_sum = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    A mean = 0;
    for (int64_t k = 0; k < a.heads; ++k) mean += static_cast<A>(to_float(logits[b * a.heads + k]));
    mean /= A(a.heads);
    const A l = clamp_(mean, A(-a.logit_clamp), A(a.logit_clamp));
    A r = clamp_(std::exp(l), A(a.ratio_lo), A(a.ratio_hi));
    if (divisor) r /= divisor[b];
    r_out[b] = r;
    h_out[b] = div_h(a.divergence.kind, std::log(r), param);
    h_sum += h_out[b];
  }
  static_cast<A*>(a.h_stats_out)[0] = h_sum;
  static_cast<A*>(a.h_stats_out)[1] = A(a.batch);
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
