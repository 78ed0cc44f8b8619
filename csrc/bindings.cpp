// The compiled module fdiv_ops._C. Each op binds its entry points in csrc/bindings/<op>.cpp; this file only
// assembles them. Every entry point takes tensors as DLPack capsules, by name, and checks them against each
// other before a kernel runs (tensor_view.h, binding_utils.h); Python (python/fdiv_ops/ops/*.py) owns memory.
#include "fdiv_ops/binding_utils.h"

namespace fdiv_ops::binding {
void bind_divergence_terms(py::module_& m);
void bind_f_distill(py::module_& m);
void bind_sequence_logprobs(py::module_& m);
void bind_f_divergence(py::module_& m);
void bind_build_info(py::module_& m);
}  // namespace fdiv_ops::binding

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fdiv-ops compiled core (torch-free): typed entry points on DLPack tensors, called by fdiv_ops.ops";
  fdiv_ops::binding::bind_build_info(m);
  fdiv_ops::binding::bind_divergence_terms(m);
  fdiv_ops::binding::bind_f_distill(m);
  fdiv_ops::binding::bind_sequence_logprobs(m);
  fdiv_ops::binding::bind_f_divergence(m);
}
