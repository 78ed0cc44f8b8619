// The compiled module fdiv_ops._C. Each op binds its entry points in csrc/bindings/<op>.cpp and registers
// them there (FDIV_REGISTER_BINDING); this file only runs what was registered. Every entry point takes tensors
// as DLPack capsules, by name, and checks them against each other before a kernel runs (tensor_view.h,
// binding_utils.h); Python (python/fdiv_ops/ops/*.py) owns memory.
#include "fdiv_ops/binding_utils.h"

namespace fdiv_ops::binding {
void bind_build_info(py::module_& m);
}  // namespace fdiv_ops::binding

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fdiv-ops compiled core (torch-free): typed entry points on DLPack tensors, called by fdiv_ops.ops";
  fdiv_ops::binding::bind_build_info(m);
  for (fdiv_ops::binding::BindFn bind : fdiv_ops::binding::registered_bindings()) bind(m);
}
