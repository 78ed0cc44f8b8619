// fdiv_ops::vp_* : the per-rank phases of the vocabulary-parallel ops (the kernel interface: vocab_parallel.h).
// Python (ops/vocab_parallel.py) runs the collectives between them; every tensor here is one rank's local data.
#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/vocab_parallel.h"

namespace fdiv_ops::binding {

namespace {

void vp_row_stats(py::handle logits_arg, py::handle stats_arg, int64_t col, double scale, bool with_moment,
                  py::handle stream, int num_threads) {
  constexpr const char* op = "vp_row_stats";
  const TensorView logits = tensor_arg(op, "logits", logits_arg);
  const TensorView stats = tensor_arg(op, "stats", stats_arg);
  const DType dtype = expect_float(logits);
  expect_ndim(logits, 2, "(rows, V_local)");
  expect_contiguous(logits);
  expect_dtype(stats, acc_of(dtype), "the accumulation dtype of logits");
  expect_ndim(stats, 2, "(rows(+1), K)");
  expect_contiguous(stats);
  expect_same_device(stats, logits);
  const int64_t rows = logits.size(0), width = stats.size(1);
  if (stats.size(0) < rows || col < 0 || col + (with_moment ? 3 : 2) > width)
    value_error(op, "stats must have at least rows = " + std::to_string(rows) + " rows and room for the columns at " +
                        std::to_string(col) + ", got " + stats.shape_str());
  expect_finite_positive(op, "scale", scale);
  VpRowStatsArgs a{logits.data, dtype, rows, logits.size(1), scale, stats.data, width, col, with_moment};
  if (rows == 0) return;
  launch(logits, stream, [&] { vp_row_stats_cpu(a, num_threads); }, FDIV_CUDA_FN(vp_row_stats_cuda(a, cuda_stream)));
}

// The arguments common to phases 2 and 3, checked once.
VpKdArgs kd_args(const char* op, const TensorView& student, const TensorView& teacher, const TensorView& lse,
                 const TensorView& row_scale, py::handle labels_arg, double hard_weight, int64_t kind, double param,
                 double inv_temperature, bool teacher_is_logprobs) {
  const DType dtype = expect_float(student), acc = acc_of(dtype);
  expect_ndim(student, 2, "(rows, V_local)");
  expect_contiguous(student);
  const int64_t rows = student.size(0);
  expect_dtype(teacher, dtype, "the dtype of student");
  expect_ndim(teacher, 2, "(rows, V'_local)");
  if (teacher.size(0) != rows)
    value_error(op, "teacher must have rows = " + std::to_string(rows) + ", got " + teacher.shape_str());
  expect_contiguous(teacher);
  expect_same_device(teacher, student);
  expect_buffer(lse, DType::float64, "float64", {rows, 3}, student, "(rows, 3) = ");
  expect_buffer(row_scale, acc, "the accumulation dtype of student", {rows}, student, "(rows,) = ");
  const int64_t* labels = nullptr;
  if (given(labels_arg)) {
    const TensorView lab = tensor_arg(op, "labels", labels_arg);
    expect_int64(lab);
    expect_shape(lab, {rows}, "(rows,) = ");
    expect_contiguous(lab);
    expect_same_device(lab, student);
    labels = static_cast<const int64_t*>(lab.data);
    expect_finite_non_negative(op, "hard_weight", hard_weight);
  }
  expect_finite_positive(op, "inv_temperature", inv_temperature);
  VpKdArgs a{};
  a.student = student.data;
  a.teacher = teacher.data;
  a.dtype = dtype;
  a.rows = rows;
  a.vs = student.size(1);
  a.vt = teacher.size(1);
  a.teacher_is_logprobs = teacher_is_logprobs;
  a.inv_temperature = inv_temperature;
  a.divergence = divergence_spec(op, kind, param, dtype);
  a.lse = static_cast<const double*>(lse.data);
  a.row_scale = row_scale.data;
  a.labels = labels;
  a.hard_weight = labels != nullptr ? hard_weight : 0.0;
  return a;
}

void vp_kd_partial(py::handle student_arg, py::handle teacher_arg, py::handle lse_arg, py::handle row_scale_arg,
                   py::handle labels_arg, py::handle partial_arg, double hard_weight, int64_t kind, double param,
                   double inv_temperature, bool teacher_is_logprobs, py::handle stream, int num_threads) {
  constexpr const char* op = "vp_kd_partial";
  const TensorView student = tensor_arg(op, "student", student_arg);
  const TensorView teacher = tensor_arg(op, "teacher", teacher_arg);
  const TensorView lse = tensor_arg(op, "lse", lse_arg);
  const TensorView row_scale = tensor_arg(op, "row_scale", row_scale_arg);
  const TensorView partial = tensor_arg(op, "partial", partial_arg);
  VpKdArgs a = kd_args(op, student, teacher, lse, row_scale, labels_arg, hard_weight, kind, param, inv_temperature,
                       teacher_is_logprobs);
  expect_buffer(partial, acc_of(a.dtype), "the accumulation dtype of student", {3, a.rows}, student, "(3, rows) = ");
  a.partial = partial.data;
  if (a.rows == 0) return;
  launch(student, stream, [&] { vp_kd_partial_cpu(a, num_threads); }, FDIV_CUDA_FN(vp_kd_partial_cuda(a, cuda_stream)));
}

void vp_kd_grad(py::handle student_arg, py::handle teacher_arg, py::handle lse_arg, py::handle row_scale_arg,
                py::handle labels_arg, py::handle totals_arg, py::handle row_loss_arg, py::handle grad_arg,
                double hard_weight, int64_t kind, double param, double inv_temperature, bool teacher_is_logprobs,
                py::handle stream, int num_threads) {
  constexpr const char* op = "vp_kd_grad";
  const TensorView student = tensor_arg(op, "student", student_arg);
  const TensorView teacher = tensor_arg(op, "teacher", teacher_arg);
  const TensorView lse = tensor_arg(op, "lse", lse_arg);
  const TensorView row_scale = tensor_arg(op, "row_scale", row_scale_arg);
  const TensorView totals = tensor_arg(op, "totals", totals_arg);
  const TensorView row_loss = tensor_arg(op, "row_loss", row_loss_arg);
  const TensorView grad = tensor_arg(op, "grad", grad_arg);
  VpKdArgs a = kd_args(op, student, teacher, lse, row_scale, labels_arg, hard_weight, kind, param, inv_temperature,
                       teacher_is_logprobs);
  const DType acc = acc_of(a.dtype);
  expect_buffer(totals, acc, "the accumulation dtype of student", {3, a.rows}, student, "(3, rows) = ");
  expect_buffer(row_loss, acc, "the accumulation dtype of student", {a.rows}, student, "(rows,) = ");
  expect_buffer(grad, a.dtype, "the dtype of student", {a.rows, a.vs}, student, "(rows, V_local) = ");
  a.totals = totals.data;
  a.row_loss = row_loss.data;
  a.grad = grad.data;
  if (a.rows == 0) return;
  launch(student, stream, [&] { vp_kd_grad_cpu(a, num_threads); }, FDIV_CUDA_FN(vp_kd_grad_cuda(a, cuda_stream)));
}

void vp_seq_grad(py::handle logits_arg, py::handle lse_arg, py::handle entropy_arg, py::handle local_label_arg,
                 py::handle grad_logprobs_arg, py::handle grad_entropy_arg, py::handle grad_arg, double inv_temperature,
                 py::handle stream, int num_threads) {
  constexpr const char* op = "vp_seq_grad";
  const TensorView logits = tensor_arg(op, "logits", logits_arg);
  const TensorView lse = tensor_arg(op, "lse", lse_arg);
  const TensorView local_label = tensor_arg(op, "local_label", local_label_arg);
  const TensorView grad = tensor_arg(op, "grad", grad_arg);
  const DType dtype = expect_float(logits), acc = acc_of(dtype);
  expect_ndim(logits, 2, "(rows, V_local)");
  expect_contiguous(logits);
  const int64_t rows = logits.size(0);
  expect_buffer(lse, DType::float64, "float64", {rows}, logits, "(rows,) = ");
  expect_int64(local_label);
  expect_shape(local_label, {rows}, "(rows,) = ");
  expect_contiguous(local_label);
  expect_same_device(local_label, logits);
  expect_buffer(grad, dtype, "the dtype of logits", {rows, logits.size(1)}, logits, "(rows, V_local) = ");
  expect_finite_positive(op, "inv_temperature", inv_temperature);
  VpSeqGradArgs a{logits.data,
                  dtype,
                  rows,
                  logits.size(1),
                  inv_temperature,
                  static_cast<const double*>(lse.data),
                  nullptr,
                  static_cast<const int64_t*>(local_label.data),
                  nullptr,
                  nullptr,
                  grad.data};
  if (given(grad_logprobs_arg)) {
    const TensorView g = tensor_arg(op, "grad_logprobs", grad_logprobs_arg);
    expect_buffer(g, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
    a.grad_logprobs = g.data;
  }
  if (given(grad_entropy_arg)) {
    const TensorView g = tensor_arg(op, "grad_entropy", grad_entropy_arg);
    expect_buffer(g, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
    a.grad_entropy = g.data;
    const TensorView e = tensor_arg(op, "entropy", entropy_arg);
    expect_buffer(e, DType::float64, "float64", {rows}, logits, "(rows,) = ");
    a.entropy = static_cast<const double*>(e.data);
  }
  if (rows == 0) return;
  launch(logits, stream, [&] { vp_seq_grad_cpu(a, num_threads); }, FDIV_CUDA_FN(vp_seq_grad_cuda(a, cuda_stream)));
}

}  // namespace

void bind_vocab_parallel(py::module_& m) {
  m.def("vp_row_stats", &vp_row_stats, py::arg("logits"), py::arg("stats"), py::arg("col"), py::arg("scale"),
        py::arg("with_moment"), py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "Phase 1 of a vocabulary-parallel op: per row of the local shard (max, sum exp(x - max)(, moment)) of "
        "x = logits * scale, into stats[:, col:col + 2 (3)] (accumulation dtype).");
  m.def("vp_kd_partial", &vp_kd_partial, py::arg("student"), py::arg("teacher"), py::arg("lse"), py::arg("row_scale"),
        py::arg("labels"), py::arg("partial"), py::arg("hard_weight"), py::arg("kind"), py::arg("param"),
        py::arg("inv_temperature"), py::arg("teacher_is_logprobs"), py::arg("stream") = py::none(),
        py::arg("num_threads") = 1,
        "Phase 2 of vocabulary-parallel f_divergence: per row [loss part, S part, label logit part] of the shard.");
  m.def("vp_kd_grad", &vp_kd_grad, py::arg("student"), py::arg("teacher"), py::arg("lse"), py::arg("row_scale"),
        py::arg("labels"), py::arg("totals"), py::arg("row_loss"), py::arg("grad"), py::arg("hard_weight"),
        py::arg("kind"), py::arg("param"), py::arg("inv_temperature"), py::arg("teacher_is_logprobs"),
        py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "Phase 3 of vocabulary-parallel f_divergence: the row losses and the shard's gradient (may alias student).");
  m.def("vp_seq_grad", &vp_seq_grad, py::arg("logits"), py::arg("lse"), py::arg("entropy"), py::arg("local_label"),
        py::arg("grad_logprobs"), py::arg("grad_entropy"), py::arg("grad"), py::arg("inv_temperature"),
        py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "Backward of vocabulary-parallel sequence_logprobs on one shard.");
}

FDIV_REGISTER_BINDING(bind_vocab_parallel);

}  // namespace fdiv_ops::binding
