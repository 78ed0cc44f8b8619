// How Python hands tensors to the bindings: fdiv_ops.ops._plumbing asks once whether torch's tensor type
// publishes the DLPack C exchange table (then tensors pass as they are, read in place, and the CUDA stream comes
// from torch through it), or falls back to torch.utils.dlpack.to_dlpack capsules and its own stream query.
#include "fdiv_ops/binding_utils.h"

namespace fdiv_ops::binding {

void bind_dlpack(py::module_& m) {
  m.def(
      "dlpack_exchange", [](py::handle tensor) { return exchange_api(tensor.ptr()) != nullptr; }, py::arg("tensor"),
      "Whether tensors of this one's type can be passed to the bindings as they are (the DLPack C exchange table)");
}

FDIV_REGISTER_BINDING(bind_dlpack);

}  // namespace fdiv_ops::binding
