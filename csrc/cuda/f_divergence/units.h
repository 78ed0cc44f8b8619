// The translation units of the CUDA f_divergence kernels. Each (dtype, divergence) pair has its own
// kernels (the divergence is dispatched once per launch, on the host); they are spread over several units
// per dtype so that nvcc compiles them in parallel: divergence id i goes to unit i % kUnits<T>. The units
// are the small files <dtype>_<unit>.cu next to this header; f_divergence.cu holds the entry points.
// Adding a divergence to divergences.h's table touches nothing here.
#pragma once

#include <cuda_runtime.h>

#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops::token_kd {

// Units per dtype (each must have its files f32_0.cu ... f32_<n-1>.cu etc.). float64 (the checking dtype)
// has scalar-only kernels and no cluster kernel, so one unit holds them all.
template <typename T>
constexpr int kUnits = 2;
template <>
constexpr int kUnits<double> = 1;

// Launch the kernels of divergence spec.kind (which must belong to unit kUnit) on stream s.
template <typename T, int kUnit>
int launch_dense_unit(const FDivergenceArgs& a, DivergenceSpec spec, cudaStream_t s);
template <typename T, int kUnit>
int launch_topk_unit(const FDivergenceTopkArgs& a, DivergenceSpec spec, cudaStream_t s);

}  // namespace fdiv_ops::token_kd
