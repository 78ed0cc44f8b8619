// The dense f_divergence rows for cpu::bf16 logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

using DenseT = cpu::bf16;
FDIV_DENSE_TU(bf16)

}  // namespace fdiv_ops::fdiv_cpu
