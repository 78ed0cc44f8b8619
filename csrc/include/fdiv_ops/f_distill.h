// f_distill_loss (docs/math.md §2): the interface between the bindings and the CPU/CUDA kernels.
//
// Per sample b of D elements, with h_b from the discriminator logits (weights step, B values):
//   n_b = mean_i |x - teacher|            A_b = sum_i |x - teacher|,  S_b = sum_i (fake - teacher)^2
//   w_b = (h_b / (mean h + 1e-6)) / (n_b + eps)
//   grad_bi = scale * w_b (fake - teacher)   (scale = 1/(B D) for "mean", 1 for "sum")
//   loss    = 0.5 * scale * sum_b w_b^2 S_b
// Pass 1 reduces A_b and S_b per (sample, chunk) into a workspace; a finalize step turns them into w_b
// (deterministic: partials are summed in chunk order); pass 2 writes the gradient, saved for backward.
#pragma once

#include <cstdint>

#include "divergences.h"
#include "dtype.h"

namespace fdiv_ops {

struct FDistillWeightsArgs {
  const void* logits;  // (B, K) contiguous, logits_dtype; the K heads are averaged
  DType logits_dtype;
  int64_t batch, heads;
  const void* ratio_divisor;  // (B,) acc dtype, or null: r_b /= ratio_divisor[b] (time-bin normalisation)
  double logit_clamp, ratio_lo, ratio_hi;
  DivergenceSpec divergence;
  DType acc_dtype;    // float32 or float64: the dtype of every output below
  void* ratio_out;    // (B,) clamped (and divided) density ratio r_b
  void* h_out;        // (B,) h(r_b)
  void* h_stats_out;  // (2,) [sum_b h_b, B]: all-reduced across ranks by the caller if needed
};

struct FDistillArgs {
  const void* x;  // (B, D) contiguous, dtype
  const void* teacher_x0;
  const void* fake_x0;
  DType dtype;
  int64_t batch, dim;
  const void* h;        // (B,) acc dtype, or null for h == 1 (DMD2)
  const void* h_stats;  // (2,) acc dtype [sum h, count], or null: h is not normalised
  double eps, scale;
  void* grad;            // (B, D) dtype: scale * g
  void* loss;            // (1,) acc dtype
  void* normalizer_out;  // (B,) acc dtype: n_b
  void* weight_out;      // (B,) acc dtype: h_b after normalisation
  void* workspace;       // acc dtype, f_distill_workspace_elems(B, D, on_cuda) elements
};

constexpr int64_t kFDistillChunkCpu = 1 << 15;
constexpr int64_t kFDistillChunkCuda = 1 << 14;

inline int64_t f_distill_num_chunks(int64_t dim, bool on_cuda) {
  int64_t chunk = on_cuda ? kFDistillChunkCuda : kFDistillChunkCpu;
  return (dim + chunk - 1) / chunk;
}
// partials (B * chunks * 2) then the per-sample gradient scale (B)
inline int64_t f_distill_workspace_elems(int64_t batch, int64_t dim, bool on_cuda) {
  return batch * f_distill_num_chunks(dim, on_cuda) * 2 + batch;
}

void f_distill_weights_cpu(const FDistillWeightsArgs& args);
void f_distill_cpu(const FDistillArgs& args, int num_threads);

#ifdef FDIV_OPS_WITH_CUDA
// Launch on `stream` (a cudaStream_t) and return the launch's error code; no host synchronisation.
int f_distill_weights_cuda(const FDistillWeightsArgs& args, void* stream);
int f_distill_cuda(const FDistillArgs& args, void* stream);
#endif

}  // namespace fdiv_ops
