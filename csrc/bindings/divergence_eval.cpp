#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/divergence_eval.h"

namespace fdiv_ops::binding {

void bind_divergence_eval(py::module_& m) {
  // The divergence table (divergences.h) as Python sees it: name -> (id, parameter rule, parameter name,
  // default parameter or None). fdiv_ops.divergences builds DIVERGENCES and its validation from this.
  py::dict table;
#define FDIV_ROW(name, id, Functor, rule, param_name, param_default)      \
  table[#name] =                                                          \
      py::make_tuple(id, static_cast<int>(rule), std::string(param_name), \
                     param_default == param_default ? py::object(py::float_(param_default)) : py::object(py::none()));
  FDIV_DIVERGENCES(FDIV_ROW)
#undef FDIV_ROW
  m.attr("DIVERGENCE_TABLE") = table;
  m.def(
      "divergence_param_error",
      [](int kind, double param, bool single) -> py::object {
        const char* err = param_error(spec(kind, param).kind, param, single);
        return err == nullptr ? py::object(py::none()) : py::object(py::str(err));
      },
      py::arg("kind"), py::arg("param"), py::arg("single"),
      "None if `param` is valid for divergence `kind` computed in float32 (single) or float64, else what "
      "was expected");

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
