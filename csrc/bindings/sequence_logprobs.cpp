#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/sequence_logprobs.h"

namespace fdiv_ops::binding {

namespace {
SeqLogprobsLayout layout(std::uintptr_t logits, int dtype, int64_t outer, int64_t inner, int64_t vocab,
                         int64_t outer_stride, int64_t inner_stride, std::uintptr_t labels, int64_t ignore_index,
                         double inv_temperature) {
  return SeqLogprobsLayout{
      ptr<const void>(logits),    dtype_from_int(dtype), outer,          inner, vocab, outer_stride, inner_stride,
      ptr<const int64_t>(labels), ignore_index,          inv_temperature};
}
}  // namespace

void bind_sequence_logprobs(py::module_& m) {
  m.def("seq_logprobs", [](std::uintptr_t logits, int dtype, int64_t outer, int64_t inner, int64_t vocab,
                           int64_t outer_stride, int64_t inner_stride, std::uintptr_t labels, int64_t ignore_index,
                           double inv_temperature, std::uintptr_t logprobs, std::uintptr_t entropy,
                           std::uintptr_t row_stats, int num_threads, bool on_cuda, std::uintptr_t stream) {
    SeqLogprobsArgs a{
        layout(logits, dtype, outer, inner, vocab, outer_stride, inner_stride, labels, ignore_index, inv_temperature),
        ptr<void>(logprobs), ptr<void>(entropy), ptr<void>(row_stats)};
    run_on_device(
        on_cuda, stream, [&] { seq_logprobs_cpu(a, num_threads); }, FDIV_CUDA_FN(seq_logprobs_cuda(a, cuda_stream)));
  });
  m.def("seq_logprobs_backward", [](std::uintptr_t logits, int dtype, int64_t outer, int64_t inner, int64_t vocab,
                                    int64_t outer_stride, int64_t inner_stride, std::uintptr_t labels,
                                    int64_t ignore_index, double inv_temperature, std::uintptr_t row_stats,
                                    std::uintptr_t entropy, std::uintptr_t grad_logprobs, std::uintptr_t grad_entropy,
                                    std::uintptr_t grad_logits, int num_threads, bool on_cuda, std::uintptr_t stream) {
    SeqLogprobsBackwardArgs a{
        layout(logits, dtype, outer, inner, vocab, outer_stride, inner_stride, labels, ignore_index, inv_temperature),
        ptr<const void>(row_stats),
        ptr<const void>(entropy),
        ptr<const void>(grad_logprobs),
        ptr<const void>(grad_entropy),
        ptr<void>(grad_logits)};
    run_on_device(
        on_cuda, stream, [&] { seq_logprobs_backward_cpu(a, num_threads); },
        FDIV_CUDA_FN(seq_logprobs_backward_cuda(a, cuda_stream)));
  });
}

}  // namespace fdiv_ops::binding
