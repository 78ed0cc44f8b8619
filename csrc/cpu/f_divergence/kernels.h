// The CPU row kernels of f_divergence_loss, one translation unit per student dtype (dense_<dtype>.cpp) plus
// topk.cpp, and api.cpp which checks nothing (the binding did), builds the per-launch constants and splits
// the rows over the OpenMP threads. The numerics are in dense_row.h's header comment.
#pragma once

#include <cstdint>

#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops::fdiv_cpu {

// What every row of one launch shares: the canonical divergence, its parameter and logs, c1 = f'(1) and the
// near-r = 1 polynomials (divergences.h), in the accumulation type A (float, or double for float64).
template <typename A>
struct DenseSetup {
  DivergenceSpec spec;
  CatParam<A> param;
  CatSeries<A> series;
  A c1;
};

template <typename A>
DenseSetup<A> make_setup(DivergenceSpec spec) {
  spec = canonical_spec(spec);
  return {spec, make_cat_param(A(spec.param)), make_cat_series<A>(spec), div_c1<A>(spec)};
}

// Rows [begin, end) of a dense launch; scratch holds 2 * student_vocab values of A for this thread.
void dense_rows_f32(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);
void dense_rows_f64(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<double>& s, double* scratch);
void dense_rows_bf16(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);
void dense_rows_f16(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);

// Rows [begin, end) of a top-k launch; scratch holds vocab values of A plus 4 k doubles for this thread.
void topk_rows(const FDivergenceTopkArgs& a, int64_t begin, int64_t end, DivergenceSpec spec, void* scratch);

}  // namespace fdiv_ops::fdiv_cpu
