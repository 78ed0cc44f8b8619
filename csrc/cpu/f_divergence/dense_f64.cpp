// The dense f_divergence rows for double logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

using DenseT = double;
FDIV_DENSE_TU(f64)

}  // namespace fdiv_ops::fdiv_cpu
