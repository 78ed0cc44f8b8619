// Helpers shared by the per-op binding files (csrc/bindings/<op>.cpp); only binding code includes this.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "divergences.h"
#include "dtype.h"

#ifdef FDIV_OPS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fdiv_ops::binding {

namespace py = pybind11;

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline DivergenceSpec spec(int kind, double param) {
  if (!is_valid_divergence(kind))
    throw std::invalid_argument("kind: unknown divergence id " + std::to_string(kind) + ", expected 0.." +
                                std::to_string(kNumDivergences - 1));
  return DivergenceSpec{static_cast<Divergence>(kind), param};
}

// FDIV_CUDA_FN(call using `cuda_stream`): the CUDA half of run_on_device, compiled away without CUDA.
#ifdef FDIV_OPS_WITH_CUDA
#define FDIV_CUDA_FN(...) [&](void* cuda_stream) { return __VA_ARGS__; }
#else
#define FDIV_CUDA_FN(...) [&](void*) { return 0; }
#endif

// Runs cpu_fn, or cuda_fn on `stream` (a cudaStream_t as an integer), without the GIL; a CUDA launch
// error becomes a Python RuntimeError. No synchronisation: the launch error is all that is checked.
template <typename CpuFn, typename CudaFn>
void run_on_device(bool on_cuda, std::uintptr_t stream, CpuFn cpu_fn, CudaFn cuda_fn) {
  py::gil_scoped_release no_gil;
  if (!on_cuda) return cpu_fn();
#ifdef FDIV_OPS_WITH_CUDA
  int err = cuda_fn(reinterpret_cast<void*>(stream));
  if (err != 0)
    throw std::runtime_error(std::string("fdiv_ops CUDA launch failed: ") +
                             cudaGetErrorString(static_cast<cudaError_t>(err)));
#else
  (void)stream;
  (void)cuda_fn;
  throw std::runtime_error("fdiv_ops was built without CUDA");
#endif
}

}  // namespace fdiv_ops::binding
