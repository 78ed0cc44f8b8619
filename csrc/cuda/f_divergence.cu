// Entry points of the CUDA f_divergence_loss kernels (formulas: include/fdiv_ops/f_divergence.h). The
// kernels themselves live in f_divergence/ (kernels.cuh, row.cuh), one instantiation per (dtype,
// divergence), compiled in the unit files f_divergence/<dtype>_<unit>.cu; this file only routes a call:
// dtype, then the unit that holds the divergence, where FDIV_DIVERGENCE_SWITCH picks its kernels once per
// launch (never per element).
#include "f_divergence/units.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fdiv_ops {
namespace {

template <typename T, typename Args, typename Dense>
int route(const Args& a, DivergenceSpec spec, cudaStream_t s, Dense) {
  using token_kd::kUnits;
  const int unit = static_cast<int>(spec.kind) % kUnits<T>;
  static_assert(kUnits<T> >= 1 && kUnits<T> <= 4, "route() knows up to 4 units per dtype");
  constexpr bool kDense = Dense::value;
  auto call = [&](auto u) -> int {
    constexpr int U = decltype(u)::value;
    if constexpr (U < kUnits<T>) {
      if constexpr (kDense)
        return token_kd::launch_dense_unit<T, U>(a, spec, s);
      else
        return token_kd::launch_topk_unit<T, U>(a, spec, s);
    } else {
      return static_cast<int>(cudaErrorInvalidValue);
    }
  };
  switch (unit) {
    case 0:
      return call(std::integral_constant<int, 0>{});
    case 1:
      return call(std::integral_constant<int, 1>{});
    case 2:
      return call(std::integral_constant<int, 2>{});
    default:
      return call(std::integral_constant<int, 3>{});
  }
}

}  // namespace

int f_divergence_cuda(const FDivergenceArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const DivergenceSpec spec = canonical_spec(args.divergence);  // gkd_jsd(0 or 1) as forward/reverse KL
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half,
                                [&] { return route<scalar_t>(args, spec, s, std::true_type{}); });
}

int f_divergence_topk_cuda(const FDivergenceTopkArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const DivergenceSpec spec = canonical_spec(args.divergence);
  return FDIV_DISPATCH_FLOATING(args.dtype, __nv_bfloat16, __half,
                                [&] { return route<scalar_t>(args, spec, s, std::false_type{}); });
}

}  // namespace fdiv_ops
