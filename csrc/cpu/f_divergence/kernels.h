// The CPU row kernels of f_divergence_loss, one translation unit per student dtype (dense_<dtype>.cpp) plus
// topk.cpp, and api.cpp which checks nothing (the binding did), builds the per-launch constants and splits
// the rows over the OpenMP threads. The numerics are in dense_row.h's header comment.
#pragma once

#include <cstdint>

#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops::fdiv_cpu {

// Row sums are accumulated in the compute type within blocks of kBlock entries (so the loops vectorise at the
// full float width) and across blocks in float64; pass B also takes its maxima per block (dense_row.h).
constexpr int64_t kBlock = 512;
inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }
// Values of A in one thread's scratch: e_q and e_p (Vs each) and five arrays of one value per block.
inline int64_t dense_scratch_size(int64_t vs, int64_t vt) { return 2 * vs + 5 * num_blocks(vs > vt ? vs : vt); }

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

// Rows [begin, end) of a dense launch; scratch holds dense_scratch_size(Vs, Vt) values of A (dense_row.h).
void dense_rows_f32(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);
void dense_rows_f64(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<double>& s, double* scratch);
void dense_rows_bf16(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);
void dense_rows_f16(const FDivergenceArgs& a, int64_t begin, int64_t end, const DenseSetup<float>& s, float* scratch);

// Rows [begin, end) of a top-k launch; scratch holds dense_scratch_size(V, V) values of A, then 4 k doubles.
void topk_rows(const FDivergenceTopkArgs& a, int64_t begin, int64_t end, DivergenceSpec spec, void* scratch);

}  // namespace fdiv_ops::fdiv_cpu
