// The divergence table as Python sees it, and divergence_terms: f, psi and h of one divergence evaluated
// element-wise over log-ratios (fdiv_ops.divergence_terms; kernels csrc/{cpu,cuda}/divergence_terms.*).
#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/divergence_terms.h"

namespace fdiv_ops::binding {

namespace {

constexpr const char* kOp = "divergence_terms";

void divergence_terms(py::handle log_ratio_arg, py::handle f_arg, py::handle psi_arg, py::handle h_arg, int64_t kind,
                      double param, py::handle stream, int /*num_threads*/) {
  const TensorView l = tensor_arg(kOp, "log_ratio", log_ratio_arg);
  const TensorView f = tensor_arg(kOp, "f", f_arg), psi = tensor_arg(kOp, "psi", psi_arg),
                   h = tensor_arg(kOp, "h", h_arg);
  expect_one_of(l, {DType::float32, DType::float64}, "float32 or float64");
  expect_contiguous(l);
  for (const TensorView* out : {&f, &psi, &h}) {
    expect_dtype(*out, l.dtype(), "the dtype of log_ratio");
    if (out->ndim != l.ndim) value_error(kOp, std::string(out->name) + " must have the shape of log_ratio");
    for (int d = 0; d < l.ndim; ++d)
      if (out->shape[d] != l.shape[d])
        value_error(kOp, std::string(out->name) + " must have the shape of log_ratio " + l.shape_str() + ", got " +
                             out->shape_str());
    expect_contiguous(*out);
  }
  common_device({&l, &f, &psi, &h});
  DivergenceTermsArgs a{
      divergence_spec(kOp, kind, param, l.dtype()), l.dtype(), l.data, l.numel(), f.data, psi.data, h.data};
  if (a.n == 0) return;
  launch(l, stream, [&] { divergence_terms_cpu(a); }, FDIV_CUDA_FN(divergence_terms_cuda(a, cuda_stream)));
}

}  // namespace

void bind_divergence_terms(py::module_& m) {
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
      [](int64_t kind, double param, bool single) -> py::object {
        if (kind < 0 || kind >= kNumDivergences)
          value_error("divergence_param_error", "kind must be a divergence id in [0, " +
                                                    std::to_string(kNumDivergences) + "), got " + std::to_string(kind));
        const char* err = param_error(static_cast<Divergence>(kind), param, single);
        return err == nullptr ? py::object(py::none()) : py::object(py::str(err));
      },
      py::arg("kind"), py::arg("param"), py::arg("single"),
      "None if `param` is valid for divergence `kind` computed in float32 (single) or float64, else what "
      "was expected");
  m.def(
      "divergence_exp_rates",
      [](int64_t kind, double param, bool of_f) {
        const DivergenceSpec s = divergence_spec("divergence_exp_rates", kind, param, DType::float64);
        double up = 0, down = 0;
        div_exp_rates(s.kind, param, of_f, &up, &down);
        return py::make_tuple(up, down);
      },
      py::arg("kind"), py::arg("param"), py::arg("of_f"),
      "(up, down): psi and h (and f with of_f) grow like e^(up l) as l -> +inf and e^(-down l) as l -> -inf");
  m.def("divergence_terms", &divergence_terms, py::arg("log_ratio"), py::arg("f"), py::arg("psi"), py::arg("h"),
        py::arg("kind"), py::arg("param"), py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "f, psi and h of divergence (kind, param) at each log-ratio, written into f, psi and h (same shape and "
        "dtype as log_ratio: float32 or float64, contiguous, one device)");
}

FDIV_REGISTER_BINDING(bind_divergence_terms);

}  // namespace fdiv_ops::binding
