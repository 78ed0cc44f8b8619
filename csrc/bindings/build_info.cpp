// What was compiled and whether a CUDA device is usable: fdiv_ops.build_info(), fdiv_ops.cuda_available() and
// the facts behind fdiv_ops._cuda_status (which turns them into messages that say what to install).
#include <string>

#include "fdiv_ops/binding_utils.h"

namespace fdiv_ops::binding {

namespace {

// "12.9" from 12090 (the encoding of CUDART_VERSION and cudaDriverGetVersion).
std::string cuda_version_string(int version) {
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

#ifdef FDIV_OPS_WITH_CUDA
// The oldest driver API version the linked runtime accepts: CUDA minor-version compatibility lets a runtime of
// major version M run on any driver of the same major version (12.9 on a 12.0 driver, R525), never on an older one.
constexpr int kRuntimeVersion = CUDART_VERSION;
constexpr int kMinDriverVersion = (CUDART_VERSION / 1000) * 1000;

// Facts and a status code, in the order that tells a user what is wrong: no driver at all, a driver older than this
// build's runtime, then what the runtime itself reports (no device, or another error). Never throws.
py::dict probe_cuda() {
  py::dict facts;
  facts["built"] = true;
  facts["runtime_version"] = kRuntimeVersion;
  facts["min_driver_version"] = kMinDriverVersion;
  int driver = 0;
  // 0 when libcuda.so.1 cannot be loaded (no NVIDIA driver); the runtime is linked statically, so this works
  // on a machine without one.
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  facts["driver_version"] = driver;
  int count = 0;
  std::string status = "ok", error;
  if (driver == 0) {
    status = "no_driver";
  } else if (driver < kMinDriverVersion) {
    status = "driver_too_old";  // cudaGetDeviceCount would only say "driver version is insufficient"
  } else {
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
      status = "no_device";
      count = 0;
    } else if (err == cudaErrorInsufficientDriver) {
      status = "driver_too_old";
      count = 0;
    } else if (err != cudaSuccess) {
      status = "cuda_error";
      error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
      count = 0;
    }
    if (err != cudaSuccess) cudaGetLastError();  // clear it so that later runtime calls are not poisoned
  }
  facts["device_count"] = count;
  facts["status"] = status;
  facts["error"] = error;
  return facts;
}
#else
py::dict probe_cuda() {
  py::dict facts;
  facts["built"] = false;
  facts["runtime_version"] = 0;
  facts["min_driver_version"] = 0;
  facts["driver_version"] = 0;
  facts["device_count"] = 0;
  facts["status"] = "not_built";
  facts["error"] = "";
  return facts;
}
#endif

// One line per status, for build_info()["cuda_status"]; fdiv_ops._cuda_status adds what to install.
std::string status_line(const py::dict& facts) {
  const std::string status = facts["status"].cast<std::string>();
  if (status == "ok") return "ok";
  if (status == "no_device") return "no CUDA device";
  if (status == "no_driver") return "no NVIDIA driver";
  if (status == "not_built") return "fdiv_ops was built without CUDA";
  if (status == "driver_too_old") {
    const int driver = facts["driver_version"].cast<int>();
    return "NVIDIA driver too old for this build (found a driver for CUDA " + cuda_version_string(driver) +
           ", needs >= " + cuda_version_string(facts["min_driver_version"].cast<int>()) + ")";
  }
  return facts["error"].cast<std::string>();
}

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
  const py::dict facts = probe_cuda();
  info["cuda"] = true;
  info["cuda_archs"] = std::string(FDIV_OPS_CUDA_ARCHS);
  info["cuda_runtime_version"] = cuda_version_string(kRuntimeVersion);  // linked statically: fixed at build time
  const int driver = facts["driver_version"].cast<int>();
  info["cuda_driver_version"] = driver == 0 ? py::object(py::none()) : py::object(py::str(cuda_version_string(driver)));
  info["cuda_min_driver_version"] = cuda_version_string(kMinDriverVersion);
#else
  info["cuda"] = false;
  info["cuda_archs"] = py::none();
  info["cuda_runtime_version"] = py::none();
  info["cuda_driver_version"] = py::none();
  info["cuda_min_driver_version"] = py::none();
#endif
  return info;
}

// (device count, status line). Never throws, so importing on a machine without a driver is clean.
py::tuple cuda_device_count() {
  const py::dict facts = probe_cuda();
  return py::make_tuple(facts["device_count"], status_line(facts));
}

}  // namespace

void bind_build_info(py::module_& m) {
  m.def("build_info", &build_info);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_probe", &probe_cuda,
        "Raw CUDA facts: built, runtime_version, min_driver_version, driver_version (0 = no driver), "
        "device_count, status (ok, no_device, no_driver, driver_too_old, cuda_error, not_built), error");
}

}  // namespace fdiv_ops::binding
