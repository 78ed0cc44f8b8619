// The dense f_divergence rows for float logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

using DenseT = float;
FDIV_DENSE_TU(f32)

}  // namespace fdiv_ops::fdiv_cpu
