// Vocabulary-parallel f_divergence_loss and sequence_logprobs (docs/vocab_parallel.md): the interface between the
// bindings and the CPU/CUDA kernels, and the per-entry math both share. Each rank holds a contiguous shard of the
// vocabulary (student and teacher logits sharded alike); only O(rows) numbers cross ranks, in two collectives that
// python/fdiv_ops/ops/vocab_parallel.py issues between the phases below.
//
// Phase 1 (vp_row_stats, any side): per row of the local shard, with x = z * scale,
//   m = max_v x_v (NaN counted as +inf: a poisoned row has m = +inf or NaN, row_math.h),
//   s = sum_v e^(x_v - m),  w = sum_v e^(x_v - m) (x_v - m)   (w only where asked: the entropy)
//   -> all_gather of [m, s(, w)] per side and row; Python combines them in float64 into the global
//      LSE = M + log sum_r s_r e^(m_r - M), M = max_r m_r (NaN where any rank's row is poisoned).
// Phase 2 (vp_kd_partial): given the global LSE of both sides, per row of the shard
//   loss_part = sum_kept q f~ + c1 (dropped q - dropped p),  S_part = sum_v q psi~ (c1 q where dropped),
//   label_part = z_y when the hard term's label y falls in this shard, else 0
//   -> one all_reduce SUM of [loss_part, S_part(, label_part)] per row.
// Phase 3 (vp_kd_grad): given the summed partials, the gradient of the shard, grad_j = scale/T (q psi~_j - q_j S)
//   (+ scale w (softmax_1(z)_j - [j = y]) for the hard term), recomputed from the logits (nothing rows x V is kept
//   between phases), and the row loss scale (L + c1 (sum p - 1) + w (LSE_1 - z_y)), the same on every rank.
// The shifted (Bregman) forms, the near-r = 1 series, total_variation's dead zone and the NaN rule are those of the
// unsharded kernel (divergences.h, f_divergence.h): a divergence changes in one place.
// sequence_logprobs backward (vp_seq_grad): dL/dz_j = (1/T)[g (1[j = y] - p_j) - g_H p_j (log p_j + H)] for the
// shard's columns, from the global LSE and entropy; the forward needs only phase 1 and the label's logit.
#pragma once

#include <cstdint>

#include "divergences.h"
#include "dtype.h"
#include "row_math.h"

namespace fdiv_ops {

// Phase 1 on one side: per row r, stats[r * stride + col + {0, 1, 2}] = m, s(, w) in the accumulation dtype.
struct VpRowStatsArgs {
  const void* logits;  // (rows, vocab) contiguous; vocab may be 0 (an empty shard: m = -inf, s = 0)
  DType dtype;
  int64_t rows, vocab;
  double scale;  // x = z * scale (1/T, or 1)
  void* stats;   // acc dtype
  int64_t stride, col;
  bool with_moment;  // also w (the entropy's moment)
};

// Phases 2 and 3 of the distillation loss on one rank's shard.
struct VpKdArgs {
  const void* student;  // (rows, vs) contiguous, dtype
  const void* teacher;  // (rows, vt) contiguous, dtype: logits, or log-probs used as given
  DType dtype;
  int64_t rows, vs, vt;  // local sizes; the shard's first vc = min(vs, vt) columns are shared, the rest one-sided
  bool teacher_is_logprobs;
  double inv_temperature;
  DivergenceSpec divergence;
  const double* lse;      // (rows, 3) float64: LSE(z/T), LSE(y) (y = t/T, or t for log-probs), LSE(z) at T = 1
  const void* row_scale;  // (rows,) acc dtype: reduction weight (0: the row is ignored, never read)
  const int64_t* labels;  // (rows,) the hard term's label as a column of this shard (label - the shard's first
                          // global column: outside [0, vs) when another rank holds it), or nullptr. Python makes
                          // a row whose global label is out of range NaN through its LSE (no host sync).
  double hard_weight;
  void* partial;       // phase 2 out: (3, rows) acc dtype, planes [loss_part; S_part; label_part] (the first two
                       // contiguous: without a hard term only they are all-reduced)
  const void* totals;  // phase 3 in: (3, rows) acc dtype, partial summed over the ranks
  void* row_loss;      // phase 3 out: (rows,) acc dtype
  void* grad;          // phase 3 out: (rows, vs) dtype; may alias student (every z_j is read before g_j is written)
};

// The backward of vocabulary-parallel sequence_logprobs on one shard.
struct VpSeqGradArgs {
  const void* logits;  // (rows, vocab) contiguous
  DType dtype;
  int64_t rows, vocab;
  double inv_temperature;
  const double* lse;           // (rows,) global LSE(z/T) (float64); -inf: a dead row (no gradient)
  const double* entropy;       // (rows,) global entropy, or nullptr when grad_entropy is nullptr
  const int64_t* local_label;  // (rows,) the label's column in this shard, -1 when elsewhere, -2 when ignored
  const void* grad_logprobs;   // (rows,) acc dtype, or nullptr
  const void* grad_entropy;    // (rows,) acc dtype, or nullptr
  void* grad;                  // (rows, vocab) dtype
};

// One row's constants of phases 2 and 3, in the accumulation type A.
template <typename A>
struct VpRow {
  A inv_t, t_scale, t_mul;  // x = z inv_t, y = t t_scale; (t t_mul - z) inv_t = y - x
  A lse_z, lse_t;           // log q = x - lse_z, log p = y - lse_t (lse_t = 0 for log-probs: used as given)
  A shift;                  // lse_t - lse_z: l = (y - x) - shift
};

// One shared entry j < vc: q, p and the shifted terms q f~ and q psi~ (c1 q where dropped), as dense_row.h's pass C
// forms them (l from the logits, so rounding of the LSEs shifts every l alike).
template <typename Div, typename M, typename A>
FDIV_HD void vp_entry(A zr, A tr, const VpRow<A>& rs, const CatParam<A>& param, const CatSeries<A>& series, A c1, A* q,
                      A* p, A* qf, A* qpsi, bool* keep) {
  const A x = zr * rs.inv_t, y = tr * rs.t_scale;
  const bool kept = (zr > -pos_inf<A>()) & (tr > -pos_inf<A>());
  const A d = (tr * rs.t_mul - zr) * rs.inv_t;
  *q = M::exp(x - rs.lse_z);
  *p = M::exp(y - rs.lse_t);
  const CatPoint<A> e{*q,
                      *p,
                      kept ? d - rs.shift : A(0),
                      kept ? x - rs.lse_z : A(0),
                      kept ? y - rs.lse_t : A(0),
                      cat_dead_zone(x, y, rs.shift)};
  A f, ps;
  cat_terms<Div, M>(e, param, series, &f, &ps);
  *qf = kept ? f : A(0);
  *qpsi = kept ? finite_or_nan(ps) : c1 * *q;
  *keep = kept;
}

// How a row stands after phase 1: 0 compute, 1 zero (ignored, or all -inf on a side), 2 NaN (poisoned on some
// rank, or marked NaN by Python: a hard-term label out of range, shards that do not line up).
template <typename A>
FDIV_HD int vp_row_state(A scale, double lse_z, double lse_t, double lse_1) {
  if (scale == A(0)) return 1;
  if (is_nan(lse_z) || is_nan(lse_t) || is_nan(lse_1) || is_pos_inf(lse_z) || is_pos_inf(lse_t)) return 2;
  if (is_neg_inf(lse_z) || is_neg_inf(lse_t)) return 1;
  return 0;
}

template <typename A>
FDIV_HD VpRow<A> vp_row(const VpKdArgs& a, double lse_z, double lse_t) {
  VpRow<A> rs;
  rs.inv_t = A(a.inv_temperature);
  rs.t_scale = a.teacher_is_logprobs ? A(1) : rs.inv_t;
  rs.t_mul = a.teacher_is_logprobs ? A(1.0 / a.inv_temperature) : A(1);
  const double norm_t = a.teacher_is_logprobs ? 0.0 : lse_t;
  rs.lse_z = A(lse_z);
  rs.lse_t = A(norm_t);
  rs.shift = A(norm_t - lse_z);
  return rs;
}

// The row loss of phase 3 from the summed partials: loss + c1 (sum p - 1) (sum p = e^LSE(t) for log-probs as given,
// 1 for logits) + the hard term w (LSE_1 - z_y).
FDIV_HD double vp_row_loss(const VpKdArgs& a, double c1, double lse_t, double lse_1, double loss_sum, double label_sum,
                           bool hard) {
  double loss = loss_sum;
  if (a.teacher_is_logprobs) loss += c1 * (fexp(lse_t) - 1.0);
  if (hard) loss += a.hard_weight * (lse_1 - label_sum);
  return loss;
}

void vp_row_stats_cpu(const VpRowStatsArgs& args, int num_threads);
void vp_kd_partial_cpu(const VpKdArgs& args, int num_threads);
void vp_kd_grad_cpu(const VpKdArgs& args, int num_threads);
void vp_seq_grad_cpu(const VpSeqGradArgs& args, int num_threads);

#ifdef FDIV_OPS_WITH_CUDA
// Launch on `stream` (a cudaStream_t) and return the launch's error code; no host synchronisation.
int vp_row_stats_cuda(const VpRowStatsArgs& args, void* stream);
int vp_kd_partial_cuda(const VpKdArgs& args, void* stream);
int vp_kd_grad_cuda(const VpKdArgs& args, void* stream);
int vp_seq_grad_cuda(const VpSeqGradArgs& args, void* stream);
#endif

}  // namespace fdiv_ops
