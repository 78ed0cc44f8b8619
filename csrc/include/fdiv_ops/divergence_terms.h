// Element-wise evaluation of f, psi and h of one divergence over log-ratios: the internal binding that
// lets the tests hold the C++ functors against the Python float64 reference (float32 and float64).
#pragma once

#include <cstdint>

#include "divergences.h"
#include "dtype.h"

namespace fdiv_ops {

struct DivergenceTermsArgs {
  DivergenceSpec divergence;
  DType dtype;  // float32 or float64
  const void* log_ratio;
  int64_t n;
  void* f_out;
  void* psi_out;
  void* h_out;
};

void divergence_terms_cpu(const DivergenceTermsArgs& args);
#ifdef FDIV_OPS_WITH_CUDA
int divergence_terms_cuda(const DivergenceTermsArgs& args, void* stream);
#endif

}  // namespace fdiv_ops
