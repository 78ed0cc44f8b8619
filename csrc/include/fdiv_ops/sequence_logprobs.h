// sequence_logprobs (docs/math.md §4): a fused selective log-softmax, the interface between the bindings and
// the CPU/CUDA kernels.
//
// Per row (token) with logits z (V values), temperature T, s = z/T, label y:
//   m = max_v s_v,  S = sum_v e^(s_v - m),  log Z = m + log S
//   log p(y) = (s_y - m) - log S
//   entropy  = -sum_v p_v log p_v = log S - W/S,   W = sum_v e^(s_v - m) (s_v - m)
// Forward: one online pass over the row (m, S and W rescaled whenever m grows), writing log p(y), the
// entropy when asked, and (m, log S) per row for the backward. Nothing of size rows x V is written.
// Backward (the upstream gradients g = dL/dlog p(y) and g_H = dL/dentropy per row are only known then):
//   dL/dz_v = (1/T) [ g (1[v = y] - p_v) - g_H p_v (log p_v + H) ],   p_v = e^((s_v - m) - log S)
// re-reading the row once and writing the gradient in the logits' dtype: each row is read twice in total.
// Ignored rows (label == ignore_index) give log p = 0, entropy 0 and a zero gradient. A label outside
// [0, V) (and not ignore_index) gives NaN log p (the kernels cannot raise; Python checks CPU labels).
// A row whose logits are all -inf gives log p = -inf, entropy 0 and a zero gradient.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fdiv_ops {

// Rows are addressed as (outer, inner) = (B, T) with element strides, so shifted views such as
// logits[:, :-1] need no copy; the vocabulary dimension must have unit stride.
struct SeqLogprobsLayout {
  const void* logits;
  DType dtype;
  int64_t outer, inner, vocab;
  int64_t outer_stride, inner_stride;  // in elements
  const int64_t* labels;               // (outer * inner,) contiguous
  int64_t ignore_index;
  double inv_temperature;
};

struct SeqLogprobsArgs {
  SeqLogprobsLayout in;
  void* logprobs;   // (rows,) acc dtype
  void* entropy;    // (rows,) acc dtype, or null: not computed
  void* row_stats;  // (rows, 2) acc dtype: (m, log S), saved for the backward
};

struct SeqLogprobsBackwardArgs {
  SeqLogprobsLayout in;
  const void* row_stats;      // (rows, 2) acc dtype from the forward
  const void* entropy;        // (rows,) acc dtype, or null when grad_entropy is null
  const void* grad_logprobs;  // (rows,) acc dtype, or null (zero)
  const void* grad_entropy;   // (rows,) acc dtype, or null (zero)
  void* grad_logits;          // (rows, V) contiguous, the logits' dtype
};

void seq_logprobs_cpu(const SeqLogprobsArgs& args, int num_threads);
void seq_logprobs_backward_cpu(const SeqLogprobsBackwardArgs& args, int num_threads);

#ifdef FDIV_OPS_WITH_CUDA
// Launch on `stream` (a cudaStream_t) and return the launch's error code; no host synchronisation.
int seq_logprobs_cuda(const SeqLogprobsArgs& args, void* stream);
int seq_logprobs_backward_cuda(const SeqLogprobsBackwardArgs& args, void* stream);
#endif

}  // namespace fdiv_ops
