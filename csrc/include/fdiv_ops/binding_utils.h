// Helpers shared by the per-op binding files (csrc/bindings/<op>.cpp); only binding code includes this.
// A binding reads its tensors (tensor_view.h), checks them and its scalars here, fills the kernel's Args
// struct and calls launch(): every check runs before any kernel, on metadata only.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "divergences.h"
#include "dtype.h"
#include "tensor_view.h"

#ifdef FDIV_OPS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fdiv_ops::binding {

namespace py = pybind11;

// Each op's binding file registers itself (FDIV_REGISTER_BINDING(bind_<op>) at namespace scope), and the
// module (csrc/bindings.cpp) runs every registered function: adding an op touches no shared binding file.
using BindFn = void (*)(py::module_&);
inline std::vector<BindFn>& registered_bindings() {
  static std::vector<BindFn> functions;
  return functions;
}
struct RegisterBinding {
  explicit RegisterBinding(BindFn fn) { registered_bindings().push_back(fn); }
};
#define FDIV_REGISTER_BINDING(FN) \
  static const ::fdiv_ops::binding::RegisterBinding FN##_registration { FN }

// The divergence `kind` with parameter `param`, checked against the table (divergences.h) in the dtype the
// kernels compute in: float32 (single) for float32/bfloat16/float16 inputs, float64 for float64.
inline DivergenceSpec divergence_spec(const char* op, int64_t kind, double param, DType compute) {
  if (kind < 0 || kind >= kNumDivergences)
    value_error(op, "kind must be a divergence id in [0, " + std::to_string(kNumDivergences) + "), got " +
                        std::to_string(kind));
  const Divergence k = static_cast<Divergence>(kind);
  if (const char* err = param_error(k, param, compute != DType::float64))
    value_error(op, "param " + std::string(err) + ", got " + number_str(param));
  return DivergenceSpec{k, param};
}

// The device every tensor of a call is on; each further tensor is checked against it.
inline Device common_device(std::initializer_list<const TensorView*> tensors) {
  const TensorView* first = *tensors.begin();
  for (const TensorView* t : tensors) expect_same_device(*t, *first);
  return first->device;
}

// FDIV_CUDA_FN(call using `cuda_stream`): the CUDA half of launch(), compiled away without CUDA.
#ifdef FDIV_OPS_WITH_CUDA
#define FDIV_CUDA_FN(...) [&](void* cuda_stream) { return __VA_ARGS__; }
#else
#define FDIV_CUDA_FN(...) [&](void*) { return 0; }
#endif

// The CUDA stream to launch on: `stream` as given (a cudaStream_t as an integer, from
// torch.cuda.current_stream(device).cuda_stream), or when it is None the current stream of the tensors'
// device as their framework reports it through the DLPack exchange table (no Python round trip).
inline std::uintptr_t launch_stream(const TensorView& ref, py::handle stream) {
  if (!stream.is_none()) return stream.cast<std::uintptr_t>();
  if (!ref.device.cuda) return 0;
  void* current = nullptr;
  if (ref.api == nullptr || ref.api->current_work_stream(dlpack::kCUDA, ref.device.index, &current) != 0) {
    if (PyErr_Occurred()) PyErr_Clear();
    value_error(ref.op, "stream is required for CUDA tensors passed as DLPack capsules");
  }
  return reinterpret_cast<std::uintptr_t>(current);
}

// Runs cpu_fn, or cuda_fn on the stream (launch_stream) of ref's device, without the GIL. On CUDA the device
// is made current for the launch and the caller's current device restored after it, so a tensor on cuda:1
// works while cuda:0 is current. A CUDA error left pending by earlier, unrelated work is cleared first, so that
// it is not reported as this launch's failure; a sticky one (the context is broken) is named as such. No
// synchronisation: the launch's own error is all that is checked.
template <typename CpuFn, typename CudaFn>
void launch(const TensorView& ref, py::handle stream_arg, CpuFn cpu_fn, CudaFn cuda_fn) {
  const char* op = ref.op;
  const Device device = ref.device;
  if (!device.cuda) {
    py::gil_scoped_release no_gil;
    cpu_fn();
    return;
  }
#ifdef FDIV_OPS_WITH_CUDA
  const std::uintptr_t stream = launch_stream(ref, stream_arg);
  std::string failure;
  {
    py::gil_scoped_release no_gil;
    const cudaError_t stale = cudaGetLastError();
    int previous = -1;
    cudaError_t err = cudaGetDevice(&previous);
    if (err == cudaSuccess && previous != device.index) err = cudaSetDevice(device.index);
    if (err == cudaSuccess) err = static_cast<cudaError_t>(cuda_fn(reinterpret_cast<void*>(stream)));
    if (previous >= 0 && previous != device.index) cudaSetDevice(previous);
    if (err != cudaSuccess) {
      failure = std::string("fdiv_ops::") + op + ": CUDA launch on " + device.str() +
                " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
      if (stale != cudaSuccess && stale == err)
        failure +=
            "; this error was already pending before fdiv_ops ran (raised by earlier CUDA work) and is "
            "sticky: the CUDA context is unusable, the process must restart";
      else if (stale != cudaSuccess)
        failure +=
            std::string("; an earlier, unrelated CUDA error was pending and cleared first: ") + cudaGetErrorName(stale);
    }
  }
  if (!failure.empty()) throw std::runtime_error(failure);
#else
  (void)stream_arg;
  (void)cuda_fn;
  throw std::runtime_error(std::string("fdiv_ops::") + op +
                           ": fdiv_ops was built without CUDA, so it cannot run on CUDA tensors; reinstall it on a "
                           "machine with nvcc (FDIV_OPS_CUDA=ON makes the build fail loudly instead of skipping CUDA)");
#endif
}

}  // namespace fdiv_ops::binding

namespace fdiv_ops::binding {

// Value checks of integer indices where they cost nothing: on the CPU (host memory, no synchronisation).
// Returns the position of the first index outside [0, bound) that is not `skip` (and whose row is not
// skipped by `row_kept`), or -1. On CUDA the kernels turn such rows into NaN instead (documented per op).
template <typename Kept>
int64_t first_out_of_range(const TensorView& indices, int64_t bound, Kept row_kept, int64_t per_row = 1) {
  if (indices.device.cuda) return -1;
  const int64_t* v = static_cast<const int64_t*>(indices.data);
  const int64_t n = indices.numel();
  for (int64_t i = 0; i < n; ++i)
    if ((v[i] < 0 || v[i] >= bound) && row_kept(i / per_row)) return i;
  return -1;
}

inline int64_t index_at(const TensorView& indices, int64_t i) { return static_cast<const int64_t*>(indices.data)[i]; }

}  // namespace fdiv_ops::binding
