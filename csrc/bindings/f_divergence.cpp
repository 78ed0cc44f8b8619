// fdiv_ops::f_divergence and fdiv_ops::f_divergence_topk (the kernel interface: f_divergence.h), and
// categorical_eval, the CPU-only test hook on the categorical forms of divergences.h.
#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops::binding {

namespace {

// A CPU row_scale's value: rows with weight 0 are ignored by the kernels (their labels are never read).
bool row_counted(const TensorView& row_scale, int64_t r) {
  if (row_scale.device.cuda) return true;
  return row_scale.dtype() == DType::float64 ? static_cast<const double*>(row_scale.data)[r] != 0.0
                                             : static_cast<const float*>(row_scale.data)[r] != 0.0f;
}

void f_divergence(py::handle student_arg, py::handle teacher_arg, py::handle row_scale_arg, py::handle row_loss_arg,
                  py::handle grad_arg, py::handle labels_arg, int64_t kind, double param, double inv_temperature,
                  bool teacher_is_logprobs, double hard_weight, py::handle stream, int num_threads) {
  constexpr const char* op = "f_divergence";
  const TensorView student = tensor_arg(op, "student", student_arg);
  const TensorView teacher = tensor_arg(op, "teacher", teacher_arg);
  const TensorView row_scale = tensor_arg(op, "row_scale", row_scale_arg);
  const TensorView row_loss = tensor_arg(op, "row_loss", row_loss_arg);
  const TensorView grad = tensor_arg(op, "grad", grad_arg);
  const DType dtype = expect_float(student), acc = acc_of(dtype);
  expect_ndim(student, 2, "(rows, V)");
  const int64_t rows = student.size(0), vocab = student.size(1);
  if (vocab < 1) value_error(op, "student must have V >= 1 columns, got shape " + student.shape_str());
  expect_contiguous(student);
  expect_dtype(teacher, dtype, "the dtype of student");
  expect_ndim(teacher, 2, "(rows, V')");
  if (teacher.size(0) != rows || teacher.size(1) < 1)
    value_error(op, "teacher must have shape (rows, V') with rows = " + std::to_string(rows) + " and V' >= 1, got " +
                        teacher.shape_str());
  expect_contiguous(teacher);
  expect_same_device(teacher, student);
  expect_buffer(row_scale, acc, "the accumulation dtype of student", {rows}, student, "(rows,) = ");
  expect_buffer(row_loss, acc, "the accumulation dtype of student", {rows}, student, "(rows,) = ");
  expect_buffer(grad, dtype, "the dtype of student", {rows, vocab}, student, "(rows, V) = ");
  const int64_t* labels = nullptr;
  if (given(labels_arg)) {
    const TensorView lab = tensor_arg(op, "labels", labels_arg);
    expect_int64(lab);
    expect_shape(lab, {rows}, "(rows,) = ");
    expect_contiguous(lab);
    expect_same_device(lab, student);
    const int64_t bad = first_out_of_range(lab, vocab, [&](int64_t r) { return row_counted(row_scale, r); });
    if (bad >= 0)
      value_error(op, "labels must lie in [0, V) = [0, " + std::to_string(vocab) +
                          ") on rows with a non-zero row_scale, got " + std::to_string(index_at(lab, bad)) +
                          " at row " + std::to_string(bad));
    labels = static_cast<const int64_t*>(lab.data);
    expect_finite_non_negative(op, "hard_weight", hard_weight);
  }
  expect_finite_positive(op, "inv_temperature", inv_temperature);
  FDivergenceArgs a{student.data,
                    teacher.data,
                    dtype,
                    rows,
                    vocab,
                    teacher.size(1),
                    teacher_is_logprobs,
                    inv_temperature,
                    divergence_spec(op, kind, param, dtype),
                    row_scale.data,
                    row_loss.data,
                    grad.data,
                    labels,
                    labels != nullptr ? hard_weight : 0.0};
  if (rows == 0) return;
  launch(student, stream, [&] { f_divergence_cpu(a, num_threads); }, FDIV_CUDA_FN(f_divergence_cuda(a, cuda_stream)));
}

void f_divergence_topk(py::handle student_arg, py::handle indices_arg, py::handle teacher_logprobs_arg,
                       py::handle row_scale_arg, py::handle row_loss_arg, py::handle grad_arg, int64_t kind,
                       double param, double inv_temperature, py::handle stream, int num_threads) {
  constexpr const char* op = "f_divergence_topk";
  const TensorView student = tensor_arg(op, "student", student_arg);
  const TensorView indices = tensor_arg(op, "indices", indices_arg);
  const TensorView logprobs = tensor_arg(op, "teacher_logprobs", teacher_logprobs_arg);
  const TensorView row_scale = tensor_arg(op, "row_scale", row_scale_arg);
  const TensorView row_loss = tensor_arg(op, "row_loss", row_loss_arg);
  const TensorView grad = tensor_arg(op, "grad", grad_arg);
  const DType dtype = expect_float(student), acc = acc_of(dtype);
  expect_ndim(student, 2, "(rows, V)");
  const int64_t rows = student.size(0), vocab = student.size(1);
  if (vocab < 1) value_error(op, "student must have V >= 1 columns, got shape " + student.shape_str());
  expect_contiguous(student);
  expect_int64(indices);
  expect_ndim(indices, 2, "(rows, k)");
  const int64_t k = indices.size(1);
  if (indices.size(0) != rows || k < 1 || k > vocab)
    value_error(op, "indices must have shape (rows, k) with rows = " + std::to_string(rows) +
                        " and 1 <= k <= V = " + std::to_string(vocab) + ", got " + indices.shape_str());
  expect_contiguous(indices);
  expect_same_device(indices, student);
  expect_buffer(logprobs, acc, "the accumulation dtype of student", {rows, k}, student, "(rows, k) = ");
  expect_buffer(row_scale, acc, "the accumulation dtype of student", {rows}, student, "(rows,) = ");
  expect_buffer(row_loss, acc, "the accumulation dtype of student", {rows}, student, "(rows,) = ");
  expect_buffer(grad, dtype, "the dtype of student", {rows, vocab}, student, "(rows, V) = ");
  const int64_t bad = first_out_of_range(indices, vocab, [](int64_t) { return true; });
  if (bad >= 0)
    value_error(op, "indices must lie in [0, V) = [0, " + std::to_string(vocab) + "), got " +
                        std::to_string(index_at(indices, bad)) + " at row " + std::to_string(bad / k));
  expect_finite_positive(op, "inv_temperature", inv_temperature);
  FDivergenceTopkArgs a{
      student.data,    static_cast<const int64_t*>(indices.data), logprobs.data,  dtype,         rows,     vocab, k,
      inv_temperature, divergence_spec(op, kind, param, dtype),   row_scale.data, row_loss.data, grad.data};
  if (rows == 0) return;
  launch(
      student, stream, [&] { f_divergence_topk_cpu(a, num_threads); },
      FDIV_CUDA_FN(f_divergence_topk_cuda(a, cuda_stream)));
}

void categorical_eval(py::handle log_q_arg, py::handle log_p_arg, py::handle qf_arg, py::handle qpsi_arg, int64_t kind,
                      double param) {
  constexpr const char* op = "categorical_eval";
  const TensorView lq = tensor_arg(op, "log_q", log_q_arg), lp = tensor_arg(op, "log_p", log_p_arg);
  const TensorView qf = tensor_arg(op, "qf", qf_arg), qpsi = tensor_arg(op, "qpsi", qpsi_arg);
  expect_one_of(lq, {DType::float32, DType::float64}, "float32 or float64");
  expect_ndim(lq, 1, "(n,)");
  expect_contiguous(lq);
  if (lq.device.cuda) value_error(op, "log_q must be a CPU tensor (a CPU-only test hook)");
  const int64_t n = lq.size(0);
  for (const TensorView* t : {&lp, &qf, &qpsi}) expect_buffer(*t, lq.dtype(), "the dtype of log_q", {n}, lq, "(n,) = ");
  CategoricalEvalArgs a{lq.data, lp.data,  lq.dtype(), n, divergence_spec(op, kind, param, lq.dtype()),
                        qf.data, qpsi.data};
  py::gil_scoped_release no_gil;
  categorical_eval_cpu(a);
}

}  // namespace

void bind_f_divergence(py::module_& m) {
  m.def("f_divergence", &f_divergence, py::arg("student"), py::arg("teacher"), py::arg("row_scale"),
        py::arg("row_loss"), py::arg("grad"), py::arg("labels"), py::arg("kind"), py::arg("param"),
        py::arg("inv_temperature"), py::arg("teacher_is_logprobs"), py::arg("hard_weight"),
        py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "Row losses (times row_scale) into row_loss and their gradient into grad (which may be student itself). "
        "student (rows, V) and teacher (rows, V') of one floating dtype; row_scale, row_loss (rows,) in the "
        "accumulation dtype; labels (rows,) int64 or None (the hard term, weight hard_weight). All contiguous, "
        "on one device; stream: the CUDA stream to launch on.");
  m.def("f_divergence_topk", &f_divergence_topk, py::arg("student"), py::arg("indices"), py::arg("teacher_logprobs"),
        py::arg("row_scale"), py::arg("row_loss"), py::arg("grad"), py::arg("kind"), py::arg("param"),
        py::arg("inv_temperature"), py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "f_divergence against a top-k teacher: indices (rows, k) int64 and teacher_logprobs (rows, k) in the "
        "accumulation dtype.");
  m.def("categorical_eval", &categorical_eval, py::arg("log_q"), py::arg("log_p"), py::arg("qf"), py::arg("qpsi"),
        py::arg("kind"), py::arg("param"),
        "q f(p/q) and q psi(p/q) element-wise (float32 with the CPU's vectorised math, or float64); CPU only.");
}

FDIV_REGISTER_BINDING(bind_f_divergence);

}  // namespace fdiv_ops::binding
