// The CPU entry points of f_divergence_loss (include/fdiv_ops/f_divergence.h): the per-launch constants,
// chunks of rows over the OpenMP threads, and each thread's scratch row; the kernels are dense_row.h and topk.cpp.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels.h"

namespace fdiv_ops {
namespace {

using fdiv_cpu::DenseSetup;

// Rows go to the threads in chunks taken dynamically: rows cost the same, but on a shared machine a thread can
// lose its core for a scheduler slice, and with one fixed block per thread the whole call then waits for it
// (2 threads on 2 busy cores: up to 2x the time). Chunks of up to 16 rows keep the cost of taking one (an atomic
// increment) invisible next to a row's work, and leave at least 4 chunks per thread to balance.
constexpr int64_t kChunkRows = 16;

template <typename Fn>
void parallel_rows(int64_t rows, int num_threads, Fn fn) {
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, rows)));
  if (threads == 1) return fn(int64_t(0), rows);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(kChunkRows, rows / (4 * int64_t(threads))));
  const int64_t chunks = (rows + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) fn(c * chunk, std::min(rows, (c + 1) * chunk));
}

// Each thread's scratch row, kept across calls (OpenMP reuses its threads), so that no call pays for fresh
// pages: O(V) per thread, never (rows x V).
double* thread_scratch(size_t doubles) {
  thread_local std::vector<double> buf;
  if (buf.size() < doubles) buf.resize(doubles);
  return buf.data();
}

// The gradient is a fresh rows x Vs tensor on every call (torch's CPU allocator returns large blocks to the
// system), so each of its 4 KiB pages faults on first write: measured on a 2-core KVM guest, 262 MB of fresh
// output cost ~2.2 ns per float in faults and zeroing against ~0.6 ns with 2 MiB pages, more than the rest of
// the forward_kl kernel. Advising transparent huge pages for the output's 2 MiB-aligned interior before the
// first write cuts the faults 512-fold where THP is in "madvise" mode (a no-op where it is "always" or
// "never", or where the pages already exist, e.g. in place over the student's logits). Advice only: any
// error is ignored, and no byte outside the buffer is touched.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

size_t dtype_bytes(DType d) { return d == DType::float64 ? 8 : (d == DType::float32 ? 4 : 2); }

template <typename A, typename Rows>
void run_dense(const FDivergenceArgs& args, int num_threads, Rows rows_fn) {
  const DenseSetup<A> setup = fdiv_cpu::make_setup<A>(args.divergence);
  if (args.grad != args.student)
    advise_huge_pages(args.grad, size_t(args.rows) * size_t(args.student_vocab) * dtype_bytes(args.dtype));
  const size_t doubles =
      (static_cast<size_t>(fdiv_cpu::dense_scratch_size(args.student_vocab, args.teacher_vocab)) * sizeof(A) + 7) / 8;
  parallel_rows(args.rows, num_threads, [&](int64_t b, int64_t e) {
    rows_fn(args, b, e, setup, reinterpret_cast<A*>(thread_scratch(doubles)));
  });
}

template <typename T>
void categorical_eval(const CategoricalEvalArgs& a) {
  const DivergenceSpec spec = canonical_spec(a.divergence);
  const DenseSetup<T> setup = fdiv_cpu::make_setup<T>(spec);
  const T* lq = static_cast<const T*>(a.log_q);
  const T* lp = static_cast<const T*>(a.log_p);
  T* qf_out = static_cast<T*>(a.qf_out);
  T* qpsi_out = static_cast<T*>(a.qpsi_out);
  FDIV_DIVERGENCE_SWITCH(spec.kind, [&](auto div) {
    using Div = decltype(div);
    for (int64_t i = 0; i < a.n; ++i) {
      // Unshifted (q f and q psi, as the reference has them): the closed forms of cat where the kernels take
      // them, the kernels' near polynomials plus c1 q expm1(l) = c1 (p - q) elsewhere.
      const CatPoint<T> e{VecMath::exp(lq[i]), VecMath::exp(lp[i]), lp[i] - lq[i], lq[i], lp[i], T(0)};
      T qf, qpsi, near_f, near_psi;
      Div::template cat<VecMath>(e, setup.param, &qf, &qpsi);
      fdiv_cpu::cpu_cat_terms<Div, VecMath>(e, setup.param, setup.near, &near_f, &near_psi);
      if (fabs_(e.l) < setup.near.tau) {
        qf = near_f + setup.c1 * e.q * VecMath::expm1(e.l);
        qpsi = near_psi - setup.c1 * e.q;
      }
      qf_out[i] = qf;
      qpsi_out[i] = qpsi;
    }
    return 0;
  });
}

}  // namespace

void f_divergence_cpu(const FDivergenceArgs& args, int num_threads) {
  switch (args.dtype) {
    case DType::float32:
      return run_dense<float>(args, num_threads, fdiv_cpu::dense_rows_f32);
    case DType::float64:
      return run_dense<double>(args, num_threads, fdiv_cpu::dense_rows_f64);
    case DType::bfloat16:
      return run_dense<float>(args, num_threads, fdiv_cpu::dense_rows_bf16);
    case DType::float16:
      return run_dense<float>(args, num_threads, fdiv_cpu::dense_rows_f16);
  }
  throw std::invalid_argument("f_divergence: unsupported dtype");
}

void f_divergence_topk_cpu(const FDivergenceTopkArgs& args, int num_threads) {
  const DivergenceSpec spec = canonical_spec(args.divergence);
  const size_t acc_size = args.dtype == DType::float64 ? sizeof(double) : sizeof(float);
  const size_t doubles =
      (static_cast<size_t>(fdiv_cpu::dense_scratch_size(args.vocab, args.vocab)) * acc_size + 7) / 8 +
      4 * static_cast<size_t>(args.k);
  if (args.grad != args.student)
    advise_huge_pages(args.grad, size_t(args.rows) * size_t(args.vocab) * dtype_bytes(args.dtype));
  parallel_rows(args.rows, num_threads,
                [&](int64_t b, int64_t e) { fdiv_cpu::topk_rows(args, b, e, spec, thread_scratch(doubles)); });
}

void categorical_eval_cpu(const CategoricalEvalArgs& args) {
  if (args.dtype == DType::float64)
    categorical_eval<double>(args);
  else if (args.dtype == DType::float32)
    categorical_eval<float>(args);
  else
    throw std::invalid_argument("categorical_eval: log-probabilities must be float32 or float64");
}

}  // namespace fdiv_ops
