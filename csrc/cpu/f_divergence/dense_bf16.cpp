// The dense f_divergence rows for cpu::bf16 logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

FDIV_DENSE_ROWS(cpu::bf16, bf16)

}  // namespace fdiv_ops::fdiv_cpu
