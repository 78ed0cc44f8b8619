// CUDA side of the divergence_terms binding: the same functors as the CPU, on the device.
// One pass; per element one call each of f, psi and h (divergences.h): 0 to 5 exp/log each, by divergence
// (e.g. js: f 5, psi 2, h 1; reverse_kl: none). A test binding, not a hot path.
#include "fdiv_ops/cuda_utils.cuh"
#include "fdiv_ops/divergence_terms.h"

namespace fdiv_ops {
namespace {

template <typename T>
__global__ void terms_kernel(DivergenceSpec d, const T* l, int64_t n, T* f, T* psi, T* h) {
  const T param = T(d.param);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    f[i] = div_f(d.kind, l[i], param);
    psi[i] = div_psi(d.kind, l[i], param);
    h[i] = div_h(d.kind, l[i], param);
  }
}

template <typename T>
int launch(const DivergenceTermsArgs& a, cudaStream_t s) {
  if (a.n == 0) return 0;
  const int threads = 256;
  const int blocks = static_cast<int>((a.n + threads - 1) / threads < 4096 ? (a.n + threads - 1) / threads : 4096);
  terms_kernel<T><<<blocks, threads, 0, s>>>(a.divergence, static_cast<const T*>(a.log_ratio), a.n,
                                             static_cast<T*>(a.f_out), static_cast<T*>(a.psi_out),
                                             static_cast<T*>(a.h_out));
  return cuda::launch_status();
}

}  // namespace

int divergence_terms_cuda(const DivergenceTermsArgs& args, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return args.dtype == DType::float64 ? launch<double>(args, s) : launch<float>(args, s);
}

}  // namespace fdiv_ops
