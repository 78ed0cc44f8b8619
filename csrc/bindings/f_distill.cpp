// fdiv_ops::f_distill_weights and fdiv_ops::f_distill (the kernel interface: f_distill.h).
#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/f_distill.h"

namespace fdiv_ops::binding {

namespace {

void f_distill_weights(py::handle logits_arg, py::handle ratio_divisor_arg, py::handle ratio_arg, py::handle h_arg,
                       py::handle h_stats_arg, int64_t kind, double param, double logit_clamp, double ratio_lo,
                       double ratio_hi, py::handle stream, int /*num_threads*/) {
  constexpr const char* op = "f_distill_weights";
  const TensorView logits = tensor_arg(op, "logits", logits_arg);
  const TensorView ratio = tensor_arg(op, "ratio", ratio_arg), h = tensor_arg(op, "h", h_arg);
  const TensorView stats = tensor_arg(op, "h_stats", h_stats_arg);
  expect_float(logits);
  expect_ndim(logits, 2, "(B, K)");
  const int64_t batch = logits.size(0), heads = logits.size(1);
  if (batch < 1 || heads < 1)
    value_error(op, "logits must have shape (B, K) with B, K >= 1, got " + logits.shape_str());
  expect_contiguous(logits);
  expect_one_of(ratio, {DType::float32, DType::float64}, "float32 or float64 (the accumulation dtype)");
  const DType acc = ratio.dtype();
  expect_buffer(ratio, acc, "float32 or float64", {batch}, logits, "(B,) = ");
  expect_buffer(h, acc, "the dtype of ratio", {batch}, logits, "(B,) = ");
  expect_buffer(stats, acc, "the dtype of ratio", {2}, logits);
  const void* divisor = nullptr;
  if (given(ratio_divisor_arg)) {
    const TensorView d = tensor_arg(op, "ratio_divisor", ratio_divisor_arg);
    expect_buffer(d, acc, "the dtype of ratio", {batch}, logits, "(B,) = ");
    divisor = d.data;
  }
  expect_finite_positive(op, "logit_clamp", logit_clamp);
  expect_finite_positive(op, "ratio_lo", ratio_lo);
  expect_finite_positive(op, "ratio_hi", ratio_hi);
  if (!(ratio_lo < ratio_hi))
    value_error(op, "ratio_lo must be < ratio_hi, got " + number_str(ratio_lo) + " and " + number_str(ratio_hi));
  FDistillWeightsArgs a{logits.data, logits.dtype(), batch,
                        heads,       divisor,        logit_clamp,
                        ratio_lo,    ratio_hi,       divergence_spec(op, kind, param, acc),
                        acc,         ratio.data,     h.data,
                        stats.data};
  launch(logits, stream, [&] { f_distill_weights_cpu(a); }, FDIV_CUDA_FN(f_distill_weights_cuda(a, cuda_stream)));
}

void f_distill(py::handle x_arg, py::handle teacher_arg, py::handle fake_arg, py::handle h_arg, py::handle h_stats_arg,
               py::handle grad_arg, py::handle loss_arg, py::handle normalizer_arg, py::handle weight_arg,
               py::handle workspace_arg, double eps, double scale, py::handle sample_loss_arg, py::handle stream,
               int num_threads) {
  constexpr const char* op = "f_distill";
  const TensorView x = tensor_arg(op, "x", x_arg);
  const TensorView teacher = tensor_arg(op, "teacher_x0", teacher_arg);
  const TensorView fake = tensor_arg(op, "fake_x0", fake_arg);
  const TensorView grad = tensor_arg(op, "grad", grad_arg), loss = tensor_arg(op, "loss", loss_arg);
  const TensorView normalizer = tensor_arg(op, "normalizer", normalizer_arg);
  const TensorView weight = tensor_arg(op, "weight", weight_arg);
  const TensorView workspace = tensor_arg(op, "workspace", workspace_arg);
  const DType dtype = expect_float(x), acc = acc_of(dtype);
  if (x.ndim < 1 || x.size(0) < 1 || x.numel() < 1)
    value_error(op, "x must have shape (B, ...) with B >= 1 and at least one element per sample, got " + x.shape_str());
  expect_contiguous(x);
  const int64_t batch = x.size(0), dim = x.numel() / batch;
  for (const TensorView* t : {&teacher, &fake, &grad}) {
    expect_dtype(*t, dtype, "the dtype of x");
    bool same = t->ndim == x.ndim;
    for (int d = 0; same && d < x.ndim; ++d) same = t->shape[d] == x.shape[d];
    if (!same)
      value_error(op, std::string(t->name) + " must have the shape of x " + x.shape_str() + ", got " + t->shape_str());
    expect_contiguous(*t);
    expect_same_device(*t, x);
  }
  expect_dtype(loss, acc, "the accumulation dtype of x");
  if (loss.numel() != 1) value_error(op, "loss must have one element, got shape " + loss.shape_str());
  expect_same_device(loss, x);
  expect_buffer(normalizer, acc, "the accumulation dtype of x", {batch}, x, "(B,) = ");
  expect_buffer(weight, acc, "the accumulation dtype of x", {batch}, x, "(B,) = ");
  const int64_t need = f_distill_workspace_elems(batch, dim, x.device.cuda);
  expect_dtype(workspace, acc, "the accumulation dtype of x");
  if (workspace.ndim != 1 || workspace.size(0) < need)
    value_error(op, "workspace must have shape (n,) with n >= " + std::to_string(need) +
                        " (f_distill_workspace_elems), got " + workspace.shape_str());
  expect_contiguous(workspace);
  expect_same_device(workspace, x);
  const void* h = nullptr;
  const void* h_stats = nullptr;
  if (given(h_arg)) {
    const TensorView hv = tensor_arg(op, "h", h_arg);
    expect_buffer(hv, acc, "the accumulation dtype of x", {batch}, x, "(B,) = ");
    h = hv.data;
  }
  if (given(h_stats_arg)) {
    if (h == nullptr) value_error(op, "h_stats needs h (it normalises h by its mean)");
    const TensorView sv = tensor_arg(op, "h_stats", h_stats_arg);
    expect_buffer(sv, acc, "the accumulation dtype of x", {2}, x);
    h_stats = sv.data;
  }
  void* sample_loss = nullptr;
  if (given(sample_loss_arg)) {
    const TensorView sl = tensor_arg(op, "sample_loss", sample_loss_arg);
    expect_buffer(sl, acc, "the accumulation dtype of x", {batch}, x, "(B,) = ");
    sample_loss = sl.data;
  }
  expect_finite_positive(op, "eps", eps);
  expect_finite_positive(op, "scale", scale);
  FDistillArgs a{x.data, teacher.data, fake.data, dtype,           batch,       dim,           h, h_stats, eps,
                 scale,  grad.data,    loss.data, normalizer.data, weight.data, workspace.data};
  a.sample_loss = sample_loss;
  launch(x, stream, [&] { f_distill_cpu(a, num_threads); }, FDIV_CUDA_FN(f_distill_cuda(a, cuda_stream)));
}

}  // namespace

void bind_f_distill(py::module_& m) {
  m.def("f_distill_workspace_elems", &f_distill_workspace_elems, py::arg("batch"), py::arg("dim"), py::arg("on_cuda"),
        "Elements of the accumulation-dtype workspace that f_distill needs");
  m.def("f_distill_weights", &f_distill_weights, py::arg("logits"), py::arg("ratio_divisor"), py::arg("ratio"),
        py::arg("h"), py::arg("h_stats"), py::arg("kind"), py::arg("param"), py::arg("logit_clamp"),
        py::arg("ratio_lo"), py::arg("ratio_hi"), py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "Density ratio r (B,), h(r) (B,) and [sum h, B] from discriminator logits (B, K); the outputs' dtype "
        "(float32 or float64) is the accumulation dtype; ratio_divisor (B,) or None.");
  m.def("f_distill", &f_distill, py::arg("x"), py::arg("teacher_x0"), py::arg("fake_x0"), py::arg("h"),
        py::arg("h_stats"), py::arg("grad"), py::arg("loss"), py::arg("normalizer"), py::arg("weight"),
        py::arg("workspace"), py::arg("eps"), py::arg("scale"), py::arg("sample_loss") = py::none(),
        py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "The fused f-distill pass: x, teacher_x0, fake_x0 (B, ...) of one floating dtype; h (B,) and h_stats "
        "(2,) or None; writes grad, loss, normalizer, weight (accumulation dtype) and, when given, sample_loss (B,): "
        "each sample's share of loss.");
}

FDIV_REGISTER_BINDING(bind_f_distill);

}  // namespace fdiv_ops::binding
