// The dense f_divergence rows for cpu::f16 logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

using DenseT = cpu::f16;
FDIV_DENSE_TU(f16)

}  // namespace fdiv_ops::fdiv_cpu
