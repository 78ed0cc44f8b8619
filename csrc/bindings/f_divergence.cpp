#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/f_divergence.h"

namespace fdiv_ops::binding {

void bind_f_divergence(py::module_& m) {
  m.def("categorical_eval", [](std::uintptr_t log_q, std::uintptr_t log_p, int dtype, int64_t n, int kind, double param,
                               std::uintptr_t qf_out, std::uintptr_t qpsi_out) {
    CategoricalEvalArgs a{ptr<const void>(log_q), ptr<const void>(log_p), dtype_from_int(dtype), n,
                          spec(kind, param),      ptr<void>(qf_out),      ptr<void>(qpsi_out)};
    categorical_eval_cpu(a);
  });
  m.def("f_divergence", [](std::uintptr_t student, std::uintptr_t teacher, int dtype, int64_t rows,
                           int64_t student_vocab, int64_t teacher_vocab, bool teacher_is_logprobs,
                           double inv_temperature, int kind, double param, std::uintptr_t row_scale,
                           std::uintptr_t row_loss, std::uintptr_t grad, std::uintptr_t labels, double hard_weight,
                           int num_threads, bool on_cuda, std::uintptr_t stream) {
    // grad may equal student (in place); labels = 0 means no hard term
    FDivergenceArgs a{ptr<const void>(student),
                      ptr<const void>(teacher),
                      dtype_from_int(dtype),
                      rows,
                      student_vocab,
                      teacher_vocab,
                      teacher_is_logprobs,
                      inv_temperature,
                      spec(kind, param),
                      ptr<const void>(row_scale),
                      ptr<void>(row_loss),
                      ptr<void>(grad),
                      ptr<const int64_t>(labels),
                      hard_weight};
    run_on_device(
        on_cuda, stream, [&] { f_divergence_cpu(a, num_threads); }, FDIV_CUDA_FN(f_divergence_cuda(a, cuda_stream)));
  });
  m.def("f_divergence_topk",
        [](std::uintptr_t student, std::uintptr_t indices, std::uintptr_t teacher_logprobs, int dtype, int64_t rows,
           int64_t vocab, int64_t k, double inv_temperature, int kind, double param, std::uintptr_t row_scale,
           std::uintptr_t row_loss, std::uintptr_t grad, int num_threads, bool on_cuda, std::uintptr_t stream) {
          FDivergenceTopkArgs a{ptr<const void>(student),
                                ptr<const int64_t>(indices),
                                ptr<const void>(teacher_logprobs),
                                dtype_from_int(dtype),
                                rows,
                                vocab,
                                k,
                                inv_temperature,
                                spec(kind, param),
                                ptr<const void>(row_scale),
                                ptr<void>(row_loss),
                                ptr<void>(grad)};
          run_on_device(
              on_cuda, stream, [&] { f_divergence_topk_cpu(a, num_threads); },
              FDIV_CUDA_FN(f_divergence_topk_cuda(a, cuda_stream)));
        });
}

}  // namespace fdiv_ops::binding
