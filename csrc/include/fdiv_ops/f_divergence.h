// f_divergence_loss (docs/math.md §3): the interface between the bindings and the CPU/CUDA kernels.
//
// Per row r with student logits z (Vs entries), teacher logits t (Vt entries), temperature T:
//   lq_v = z_v/T - LSE(z/T),  lp_v = t_v/T - LSE(t/T)   (lp_v = t_v as given when teacher_is_logprobs)
//   the shorter row is padded with -inf up to V = max(Vs, Vt); an entry that is -inf on either side
//   is dropped from the sums (0 loss; it still feels the softmax normalisation below)
//   loss_r = sum_v q_v f(p_v/q_v),   S_r = sum_v q_v psi(p_v/q_v)          (over kept entries)
//   grad_rj = row_scale_r / T * (qpsi_j [j kept] - q_j S_r)               (= d(row_scale_r loss_r)/dz_rj)
//   row_loss_out_r = row_scale_r * loss_r ; row_scale_r = 0 skips the row (loss 0, gradient 0)
// Optional hard term (labels != nullptr): the student's cross-entropy on label y_r at temperature 1, added
// with weight w = hard_weight:  loss_r += w (LSE(z) - z_y),  grad_rj += row_scale_r w (softmax(z)_j - [j=y]).
// LSE(z) is the temperature-1 log-sum-exp (a second one when T != 1). A label outside [0, Vs) makes its row's
// loss and gradient NaN (Python rejects them first where that costs no host sync). A row that is all -inf on
// either side still gives 0 and 0, the hard term included.
// NaN rule (row_math.h), CPU and CUDA alike: a NaN or +inf among a row's student logits or teacher entries
// (logits, log-probs, or the top-k log-probs) makes that row's loss and its whole gradient row NaN; no other
// row changes. A row with row_scale 0 is not read: 0 and 0 whatever it holds.
// Numerics (divergences.h): the loss is accumulated as sum q f~ with f~(r) = f(r) - f'(1)(r - 1) >= 0 (the
// same value, since sum (p - q) = 0, corrected by f'(1) times the mass of dropped entries), each term from the
// log-ratio l formed from the logits, with polynomials near r = 1 in float32; total_variation's psi is 0 for
// |l| within a few ulps of the entry's logits (cat_dead_zone), so p = q up to rounding has zero gradient.
// In place: grad may equal student (same dtype and shape): every pass reads z_j before the last pass
// writes g_j, element by element, on CPU and CUDA (the fused-linear op relies on it).
// The top-k form replaces the teacher row by (indices, logprobs) of k entries: the divergence between
// the (k+1)-category distributions {the k tokens, one bucket with the rest of each side's mass}. Its
// gradient is grad_rj = row_scale_r / T * q_j (psi_c(j) - S_r), c(j) the category of token j.
#pragma once

#include <cstdint>

#include "divergences.h"
#include "dtype.h"

namespace fdiv_ops {

struct FDivergenceArgs {
  const void* student;  // (rows, Vs) contiguous, dtype
  const void* teacher;  // (rows, Vt) contiguous, dtype (Python casts it): logits, or log-probs
  DType dtype;
  int64_t rows, student_vocab, teacher_vocab;
  bool teacher_is_logprobs;  // skip the teacher's log-sum-exp and its temperature
  double inv_temperature;
  DivergenceSpec divergence;
  const void* row_scale;            // (rows,) acc dtype: reduction weight of each row (0 = ignored)
  void* row_loss;                   // (rows,) acc dtype: row_scale * loss_r
  void* grad;                       // (rows, Vs) dtype: d(sum_r row_loss_r)/dz; may alias student
  const int64_t* labels = nullptr;  // (rows,) or nullptr: the hard (cross-entropy) term's targets
  double hard_weight = 0.0;         // w of the hard term (used only with labels)
};

struct FDivergenceTopkArgs {
  const void* student;           // (rows, V) contiguous, dtype
  const int64_t* indices;        // (rows, k) contiguous: distinct token ids in [0, V)
  const void* teacher_logprobs;  // (rows, k) contiguous, acc dtype (small: Python casts it)
  DType dtype;
  int64_t rows, vocab, k;
  double inv_temperature;  // applied to the student only
  DivergenceSpec divergence;
  const void* row_scale;
  void* row_loss;
  void* grad;  // (rows, V) dtype; an out-of-range index makes its row NaN
};

// The categorical forms of divergences.h evaluated element-wise (float32 with the CPU's vectorised math,
// or float64), for the tests that hold them against the Python reference.
struct CategoricalEvalArgs {
  const void* log_q;
  const void* log_p;
  DType dtype;  // float32 or float64
  int64_t n;
  DivergenceSpec divergence;
  void* qf_out;
  void* qpsi_out;
};

void f_divergence_cpu(const FDivergenceArgs& args, int num_threads);
void categorical_eval_cpu(const CategoricalEvalArgs& args);
void f_divergence_topk_cpu(const FDivergenceTopkArgs& args, int num_threads);

#ifdef FDIV_OPS_WITH_CUDA
// Launch on `stream` (a cudaStream_t) and return the launch's error code; no host synchronisation.
int f_divergence_cuda(const FDivergenceArgs& args, void* stream);
int f_divergence_topk_cuda(const FDivergenceTopkArgs& args, void* stream);
#endif

}  // namespace fdiv_ops
