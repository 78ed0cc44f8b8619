// Phases 2 and 3 of vocabulary-parallel f_divergence for double logits (one translation unit per dtype keeps each
// compile short; the rows: kd_rows.h).
#include "kd_rows.h"

namespace fdiv_ops::vp_cpu {

using VpT = double;
FDIV_VP_TU(f64)

}  // namespace fdiv_ops::vp_cpu
