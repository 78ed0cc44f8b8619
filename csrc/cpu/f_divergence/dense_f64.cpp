// The dense f_divergence rows for double logits (one translation unit per dtype keeps each compile short).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

FDIV_DENSE_ROWS(double, f64)

}  // namespace fdiv_ops::fdiv_cpu
