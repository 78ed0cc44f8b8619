#include "fdiv_ops/binding_utils.h"
#include "fdiv_ops/f_distill.h"

namespace fdiv_ops::binding {

void bind_f_distill(py::module_& m) {
  m.def("f_distill_workspace_elems", &f_distill_workspace_elems);
  m.def("f_distill_weights",
        [](std::uintptr_t logits, int logits_dtype, int64_t batch, int64_t heads, std::uintptr_t divisor,
           double logit_clamp, double ratio_lo, double ratio_hi, int kind, double param, int acc_dtype,
           std::uintptr_t r_out, std::uintptr_t h_out, std::uintptr_t stats_out, bool on_cuda, std::uintptr_t stream) {
          FDistillWeightsArgs a{ptr<const void>(logits),
                                dtype_from_int(logits_dtype),
                                batch,
                                heads,
                                ptr<const void>(divisor),
                                logit_clamp,
                                ratio_lo,
                                ratio_hi,
                                spec(kind, param),
                                dtype_from_int(acc_dtype),
                                ptr<void>(r_out),
                                ptr<void>(h_out),
                                ptr<void>(stats_out)};
          run_on_device(
              on_cuda, stream, [&] { f_distill_weights_cpu(a); }, FDIV_CUDA_FN(f_distill_weights_cuda(a, cuda_stream)));
        });
  m.def("f_distill", [](std::uintptr_t x, std::uintptr_t teacher, std::uintptr_t fake, int dtype, int64_t batch,
                        int64_t dim, std::uintptr_t h, std::uintptr_t h_stats, double eps, double scale,
                        std::uintptr_t grad, std::uintptr_t loss, std::uintptr_t norm, std::uintptr_t weight,
                        std::uintptr_t workspace, int num_threads, bool on_cuda, std::uintptr_t stream) {
    FDistillArgs a{ptr<const void>(x),
                   ptr<const void>(teacher),
                   ptr<const void>(fake),
                   dtype_from_int(dtype),
                   batch,
                   dim,
                   ptr<const void>(h),
                   ptr<const void>(h_stats),
                   eps,
                   scale,
                   ptr<void>(grad),
                   ptr<void>(loss),
                   ptr<void>(norm),
                   ptr<void>(weight),
                   ptr<void>(workspace)};
    run_on_device(
        on_cuda, stream, [&] { f_distill_cpu(a, num_threads); }, FDIV_CUDA_FN(f_distill_cuda(a, cuda_stream)));
  });
}

}  // namespace fdiv_ops::binding
