// The dense f_divergence rows for cpu::f16 logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

FDIV_DENSE_ROWS(cpu::f16, f16)

}  // namespace fdiv_ops::fdiv_cpu
