// Phases 2 and 3 of vocabulary-parallel f_divergence for cpu::bf16 logits (one translation unit per dtype keeps each
// compile short; the rows: kd_rows.h).
#include "kd_rows.h"

namespace fdiv_ops::vp_cpu {

using VpT = cpu::bf16;
FDIV_VP_TU(bf16)

}  // namespace fdiv_ops::vp_cpu
