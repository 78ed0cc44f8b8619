// What was compiled and whether a CUDA device is usable: fdiv_ops.build_info() and fdiv_ops.cuda_available().
#include <string>

#include "fdiv_ops/binding_utils.h"

namespace fdiv_ops::binding {

namespace {

py::dict build_info() {
  py::dict info;
  py::list isas;
#if defined(__x86_64__)
  __builtin_cpu_init();
  isas.append("x86-64");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas.append("x86-64-v3");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) isas.append("x86-64-v4");
#else
  isas.append("generic");
#endif
  info["cpu_isa"] = isas;  // the clones the hot loops will pick on this CPU
  info["openmp"] = true;
#ifdef FDIV_OPS_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(FDIV_OPS_CUDA_ARCHS);
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  info["cuda_runtime_version"] = std::to_string(runtime / 1000) + "." + std::to_string((runtime % 1000) / 10);
#else
  info["cuda"] = false;
  info["cuda_archs"] = py::none();
  info["cuda_runtime_version"] = py::none();
#endif
  return info;
}

// (device count, reason). Never throws, so importing on a machine without a driver is clean.
py::tuple cuda_device_count() {
#ifdef FDIV_OPS_WITH_CUDA
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so later runtime calls are not poisoned
    return py::make_tuple(0, std::string(cudaGetErrorString(err)));
  }
  return py::make_tuple(n, n > 0 ? std::string("ok") : std::string("no CUDA device"));
#else
  return py::make_tuple(0, std::string("fdiv_ops was built without CUDA"));
#endif
}

}  // namespace

void bind_build_info(py::module_& m) {
  m.def("build_info", &build_info);
  m.def("cuda_device_count", &cuda_device_count);
}

}  // namespace fdiv_ops::binding
