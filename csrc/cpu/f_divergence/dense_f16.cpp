// The dense f_divergence rows for cpu::f16 logits (one translation unit per dtype keeps each compile short).
// Transcendentals per element (computed in float32): pass B 2 exp2 (one per side), pass C 0 (forward_kl,
// reverse_kl, jeffreys) to 1 exp + 1 log1p (js, gkd_jsd) or 3 (alpha), pass D 0 (dense_row.h has the table).
#include "dense_row.h"

namespace fdiv_ops::fdiv_cpu {

using DenseT = cpu::f16;
FDIV_DENSE_TU(f16)

}  // namespace fdiv_ops::fdiv_cpu
