// CPU side of the divergence_terms binding (see include/fdiv_ops/divergence_terms.h).
// One pass; per element one call each of f, psi and h (divergences.h): 0 to 5 exp/log each, by divergence
// (e.g. js: f 5, psi 2, h 1; reverse_kl: none). A test binding, not a hot path.
#include "fdiv_ops/divergence_terms.h"

#include <stdexcept>

namespace fdiv_ops {
namespace {

template <typename T>
void terms(const DivergenceTermsArgs& a) {
  const T* l = static_cast<const T*>(a.log_ratio);
  T* f = static_cast<T*>(a.f_out);
  T* psi = static_cast<T*>(a.psi_out);
  T* h = static_cast<T*>(a.h_out);
  const T param = T(a.divergence.param);
  for (int64_t i = 0; i < a.n; ++i) {
    f[i] = div_f(a.divergence.kind, l[i], param);
    psi[i] = div_psi(a.divergence.kind, l[i], param);
    h[i] = div_h(a.divergence.kind, l[i], param);
  }
}

}  // namespace

void divergence_terms_cpu(const DivergenceTermsArgs& args) {
  if (args.dtype == DType::float64)
    terms<double>(args);
  else if (args.dtype == DType::float32)
    terms<float>(args);
  else
    throw std::invalid_argument("divergence_terms: log_ratio must be float32 or float64");
}

}  // namespace fdiv_ops
