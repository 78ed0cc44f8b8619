// Phases 2 and 3 of vocabulary-parallel f_divergence for float logits (one translation unit per dtype keeps each
// compile short; the rows: kd_rows.h).
#include "kd_rows.h"

namespace fdiv_ops::vp_cpu {

using VpT = float;
FDIV_VP_TU(f32)

}  // namespace fdiv_ops::vp_cpu
