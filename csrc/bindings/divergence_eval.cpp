#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/divergence_eval.h"

namespace fdiv_ops::binding {

void bind_divergence_eval(py::module_& m) {
  py::dict ids;
#define FDIV_ID(name, id) ids[#name] = id;
  FDIV_DIVERGENCES(FDIV_ID)
#undef FDIV_ID
  m.attr("DIVERGENCE_IDS") = ids;

  m.def("divergence_exp_rates", [](int kind, double param, bool of_f) {
    double up = 0, down = 0;
    div_exp_rates(spec(kind, param).kind, param, of_f, &up, &down);
    return py::make_tuple(up, down);
  });
  m.def("divergence_eval", [](int kind, double param, int dtype, std::uintptr_t l, int64_t n, std::uintptr_t f,
                              std::uintptr_t psi, std::uintptr_t h, bool on_cuda, std::uintptr_t stream) {
    DivergenceEvalArgs a{spec(kind, param), dtype_from_int(dtype), ptr<const void>(l), n,
                         ptr<void>(f),      ptr<void>(psi),        ptr<void>(h)};
    run_on_device(on_cuda, stream, [&] { divergence_eval_cpu(a); }, FDIV_CUDA_FN(divergence_eval_cuda(a, cuda_stream)));
  });
}

}  // namespace fdiv_ops::binding
