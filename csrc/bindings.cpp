// The compiled module fdiv_ops._C. Each op binds its raw-pointer entry points in csrc/bindings/<op>.cpp;
// this file only assembles them and reports what was built. Python (python/fdiv_ops/ops/*.py) owns
// validation and memory.
#include "fdiv_ops/binding_utils.h"

namespace fdiv_ops::binding {
void bind_divergence_eval(py::module_& m);
void bind_f_distill(py::module_& m);
void bind_sequence_logprobs(py::module_& m);
void bind_f_divergence(py::module_& m);
void bind_build_info(py::module_& m);
}  // namespace fdiv_ops::binding

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fdiv-ops compiled core (torch-free): raw-pointer entry points called by fdiv_ops.ops";
  fdiv_ops::binding::bind_build_info(m);
  fdiv_ops::binding::bind_divergence_eval(m);
  fdiv_ops::binding::bind_f_distill(m);
  fdiv_ops::binding::bind_sequence_logprobs(m);
  fdiv_ops::binding::bind_f_divergence(m);
}
