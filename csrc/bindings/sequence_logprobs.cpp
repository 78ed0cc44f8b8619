// fdiv_ops::sequence_logprobs and its backward (the kernel interface: sequence_logprobs.h).
//
// The logits are (N, V) or (B, T, V) with any non-negative strides and a unit-stride vocabulary, so shifted
// views such as logits[:, :-1] are read in place; every per-row tensor is flat: (rows,) with rows = N or B T.
#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/sequence_logprobs.h"

namespace fdiv_ops::binding {

namespace {

// Rows addressed as (outer, inner) with element strides, from the logits' own metadata.
SeqLogprobsLayout layout(const char* op, const TensorView& logits, py::handle labels_arg, int64_t ignore_index,
                         double inv_temperature) {
  expect_float(logits);
  if (logits.ndim != 2 && logits.ndim != 3)
    value_error(op, "logits must have shape (N, V) or (B, T, V), got " + logits.shape_str());
  const int64_t vocab = logits.size(logits.ndim - 1);
  if (vocab < 1) value_error(op, "logits must have V >= 1, got shape " + logits.shape_str());
  if (vocab > 1 && logits.stride(logits.ndim - 1) != 1)
    value_error(op, "logits must have a unit-stride last (vocabulary) dimension, got stride " +
                        std::to_string(logits.stride(logits.ndim - 1)));
  for (int d = 0; d < logits.ndim; ++d)
    if (logits.stride(d) < 0) value_error(op, "logits must have non-negative strides");
  const bool three = logits.ndim == 3;
  const int64_t outer = three ? logits.size(0) : 1, inner = logits.size(three ? 1 : 0);
  const int64_t rows = outer * inner;
  const TensorView labels = tensor_arg(op, "labels", labels_arg);
  expect_int64(labels);
  expect_shape(labels, {rows}, "(rows,) = ");
  expect_contiguous(labels);
  expect_same_device(labels, logits);
  const int64_t* y = static_cast<const int64_t*>(labels.data);
  const int64_t bad = first_out_of_range(labels, vocab, [&](int64_t r) { return y[r] != ignore_index; });
  if (bad >= 0)
    value_error(op, "labels must lie in [0, V) = [0, " + std::to_string(vocab) + ") or equal ignore_index (" +
                        std::to_string(ignore_index) + "), got " + std::to_string(y[bad]) + " at position " +
                        std::to_string(bad));
  expect_finite_positive(op, "inv_temperature", inv_temperature);
  return SeqLogprobsLayout{
      logits.data,  logits.dtype(), outer, inner, vocab, three ? logits.stride(0) : 0, logits.stride(three ? 1 : 0), y,
      ignore_index, inv_temperature};
}

void seq_logprobs(py::handle logits_arg, py::handle labels_arg, py::handle logprobs_arg, py::handle entropy_arg,
                  py::handle row_stats_arg, int64_t ignore_index, double inv_temperature, py::handle stream,
                  int num_threads) {
  constexpr const char* op = "sequence_logprobs";
  const TensorView logits = tensor_arg(op, "logits", logits_arg);
  const SeqLogprobsLayout in = layout(op, logits, labels_arg, ignore_index, inv_temperature);
  const int64_t rows = in.outer * in.inner;
  const DType acc = acc_of(in.dtype);
  const TensorView logprobs = tensor_arg(op, "logprobs", logprobs_arg);
  const TensorView stats = tensor_arg(op, "row_stats", row_stats_arg);
  expect_buffer(logprobs, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
  expect_buffer(stats, acc, "the accumulation dtype of logits", {rows, 2}, logits, "(rows, 2) = ");
  void* entropy = nullptr;
  if (given(entropy_arg)) {
    const TensorView e = tensor_arg(op, "entropy", entropy_arg);
    expect_buffer(e, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
    entropy = e.data;
  }
  SeqLogprobsArgs a{in, logprobs.data, entropy, stats.data};
  if (rows == 0) return;
  launch(logits, stream, [&] { seq_logprobs_cpu(a, num_threads); }, FDIV_CUDA_FN(seq_logprobs_cuda(a, cuda_stream)));
}

void seq_logprobs_backward(py::handle logits_arg, py::handle labels_arg, py::handle row_stats_arg,
                           py::handle entropy_arg, py::handle grad_logprobs_arg, py::handle grad_entropy_arg,
                           py::handle grad_logits_arg, int64_t ignore_index, double inv_temperature, py::handle stream,
                           int num_threads) {
  constexpr const char* op = "sequence_logprobs_backward";
  const TensorView logits = tensor_arg(op, "logits", logits_arg);
  const SeqLogprobsLayout in = layout(op, logits, labels_arg, ignore_index, inv_temperature);
  const int64_t rows = in.outer * in.inner;
  const DType acc = acc_of(in.dtype);
  const TensorView stats = tensor_arg(op, "row_stats", row_stats_arg);
  const TensorView grad = tensor_arg(op, "grad_logits", grad_logits_arg);
  expect_buffer(stats, acc, "the accumulation dtype of logits", {rows, 2}, logits, "(rows, 2) = ");
  expect_buffer(grad, in.dtype, "the dtype of logits", {rows, in.vocab}, logits, "(rows, V) = ");
  const void* g_lp = nullptr;
  const void* g_ent = nullptr;
  const void* entropy = nullptr;
  if (given(grad_logprobs_arg)) {
    const TensorView g = tensor_arg(op, "grad_logprobs", grad_logprobs_arg);
    expect_buffer(g, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
    g_lp = g.data;
  }
  if (given(grad_entropy_arg)) {
    const TensorView g = tensor_arg(op, "grad_entropy", grad_entropy_arg);
    expect_buffer(g, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
    g_ent = g.data;
    if (!given(entropy_arg)) value_error(op, "entropy is required with grad_entropy");
    const TensorView e = tensor_arg(op, "entropy", entropy_arg);
    expect_buffer(e, acc, "the accumulation dtype of logits", {rows}, logits, "(rows,) = ");
    entropy = e.data;
  }
  SeqLogprobsBackwardArgs a{in, stats.data, entropy, g_lp, g_ent, grad.data};
  if (rows == 0) return;
  launch(
      logits, stream, [&] { seq_logprobs_backward_cpu(a, num_threads); },
      FDIV_CUDA_FN(seq_logprobs_backward_cuda(a, cuda_stream)));
}

}  // namespace

void bind_sequence_logprobs(py::module_& m) {
  m.def("sequence_logprobs", &seq_logprobs, py::arg("logits"), py::arg("labels"), py::arg("logprobs"),
        py::arg("entropy"), py::arg("row_stats"), py::arg("ignore_index"), py::arg("inv_temperature"),
        py::arg("stream") = py::none(), py::arg("num_threads") = 1,
        "log softmax(logits / T)[label] per row into logprobs (rows,), the entropy when entropy is not None, and "
        "(max, log-sum) per row into row_stats (rows, 2). logits (N, V) or (B, T, V) with a unit-stride V.");
  m.def("sequence_logprobs_backward", &seq_logprobs_backward, py::arg("logits"), py::arg("labels"),
        py::arg("row_stats"), py::arg("entropy"), py::arg("grad_logprobs"), py::arg("grad_entropy"),
        py::arg("grad_logits"), py::arg("ignore_index"), py::arg("inv_temperature"), py::arg("stream") = py::none(),
        py::arg("num_threads") = 1,
        "dL/dlogits into grad_logits (rows, V) contiguous from the per-row upstream gradients (each may be None).");
}

FDIV_REGISTER_BINDING(bind_sequence_logprobs);

}  // namespace fdiv_ops::binding
