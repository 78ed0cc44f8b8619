// f_distill_loss (docs/math.md §2): the interface between the bindings and the CPU/CUDA kernels.
//
// Per sample b of D elements, with h_b from the discriminator logits (weights step, B values):
//   n_b = mean_i |x - teacher|            A_b = sum_i |x - teacher|,  S_b = sum_i (fake - teacher)^2
//   w_b = (h_b / (mean h + 1e-6)) / (n_b + eps)
//   grad_bi = scale * w_b (fake - teacher)   (scale = 1/(B D) for "mean", 1 for "sum")
//   sample_loss_b = 0.5 * scale * w_b^2 S_b,   loss = sum_b sample_loss_b
// Pass 1 reduces A_b and S_b per (sample, chunk) into a workspace; a finalize step turns them into w_b
// (deterministic: partials are summed in chunk order); pass 2 writes the gradient, saved for backward.
//
// Numerics (f_distill_math.h): the weights step passes log h_b, not h_b, and [sum h, n] scaled by a
// constant e^-c, so h = r^30 cannot overflow; the per-sample arithmetic runs in double and forms the loss as
// (w_b ||d_b|| sqrt(scale/2))^2, and S_b never overflows (accumulated in double, or recomputed scaled), so
// inputs near 1e23 give the finite loss they have. NaN rules: a NaN discriminator logit makes that sample's
// ratio, h, weight, gradient and sample loss NaN (and the total loss), and is left out of the batch mean of
// h, so the other samples keep their weights; a NaN in x/teacher/fake makes that sample NaN likewise.
#pragma once

#include <cstdint>

#include "divergences.h"
#include "dtype.h"
#include "f_distill_math.h"

namespace fdiv_ops {

struct FDistillWeightsArgs {
  const void* logits;  // (B, K) contiguous, logits_dtype; the K heads are averaged
  DType logits_dtype;
  int64_t batch, heads;
  const void* ratio_divisor;  // (B,) acc dtype, or null: r_b /= ratio_divisor[b] (time-bin normalisation)
  double logit_clamp, ratio_lo, ratio_hi;
  DivergenceSpec divergence;
  DType acc_dtype;    // float32 or float64: the dtype of every output below
  void* ratio_out;    // (B,) clamped (and divided) density ratio r_b; NaN for a NaN logit
  void* h_out;        // (B,) log h(r_b) (log space: h itself overflows float32 for alpha(30))
  void* h_stats_out;  // (2,) e^-c [sum_b h_b, n] over the n samples whose h is not NaN, with
                      // c = f_distill_h_log_scale<acc>(divergence, ratio_lo, ratio_hi), the same on every
                      // rank (0 for every divergence but extreme alphas): all-reduced (summed) by the caller
};

struct FDistillArgs {
  const void* x;  // (B, D) contiguous, dtype
  const void* teacher_x0;
  const void* fake_x0;
  DType dtype;
  int64_t batch, dim;
  const void* h;        // (B,) acc dtype log h_b from the weights step, or null for h == 1 (DMD2)
  const void* h_stats;  // (2,) acc dtype e^-c [sum h, count] from the weights step, or null: not normalised
  double eps, scale;
  void* grad;            // (B, D) dtype: scale * g
  void* loss;            // (1,) acc dtype
  void* normalizer_out;  // (B,) acc dtype: n_b
  void* weight_out;      // (B,) acc dtype: h_b after normalisation
  void* workspace;       // acc dtype, f_distill_workspace_elems(B, D, on_cuda) elements
  // Added fields (default off, so older callers keep working):
  void* sample_loss = nullptr;  // (B,) acc dtype, or null: 0.5 * scale * w_b^2 S_b (reduction="none")
};

constexpr int64_t kFDistillChunkCpu = 1 << 15;
constexpr int64_t kFDistillChunkCuda = 1 << 14;

inline int64_t f_distill_num_chunks(int64_t dim, bool on_cuda) {
  int64_t chunk = on_cuda ? kFDistillChunkCuda : kFDistillChunkCpu;
  return (dim + chunk - 1) / chunk;
}
// In acc-dtype elements, enough for doubles whatever the acc dtype (the sums and per-sample values are
// kept in double, see f_distill_math.h): 2 partial sums per (sample, chunk), then 2 values per sample.
inline int64_t f_distill_workspace_elems(int64_t batch, int64_t dim, bool on_cuda) {
  return 2 * (batch * f_distill_num_chunks(dim, on_cuda) * 2 + 2 * batch);
}

void f_distill_weights_cpu(const FDistillWeightsArgs& args);
void f_distill_cpu(const FDistillArgs& args, int num_threads);

#ifdef FDIV_OPS_WITH_CUDA
// Launch on `stream` (a cudaStream_t) and return the launch's error code; no host synchronisation.
int f_distill_weights_cuda(const FDistillWeightsArgs& args, void* stream);
int f_distill_cuda(const FDistillArgs& args, void* stream);
#endif

}  // namespace fdiv_ops
