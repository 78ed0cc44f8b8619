// Phases 2 and 3 of vocabulary-parallel f_divergence for cpu::f16 logits (one translation unit per dtype keeps each
// compile short; the rows: kd_rows.h).
#include "kd_rows.h"

namespace fdiv_ops::vp_cpu {

using VpT = cpu::f16;
FDIV_VP_TU(f16)

}  // namespace fdiv_ops::vp_cpu
