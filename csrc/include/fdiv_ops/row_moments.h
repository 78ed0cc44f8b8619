// The online row state of sequence_logprobs, shared by the CPU loop and the CUDA kernel (host-device,
// torch-free): the running max m of s = z / T, the sum S = sum_v e^(s_v - m) and the entropy moment
// W = sum_v e^(s_v - m) (s_v - m), so that
//   log Z = m + log S,   log p(y) = (s_y - m) - log S,   entropy = log S - W / S.
//
// Accuracy: S is kept as ones + rest, where `ones` counts the terms equal to the max (each exactly e^0 = 1)
// and `rest` sums the others (each < 1). For a sharply peaked row S = 1 + 1e-9 rounds to 1 in float32, and
// log S and the entropy (~1e-9) were lost to that rounding (relative error 3e-2, worse than eager's);
// log S = log1p((ones - 1) + rest) keeps them, and entropy = log S + (-W) / S adds two non-negative terms,
// so nothing cancels. The max is taken with row_math.h's nan_max: a NaN logit makes m, and so the row's
// log-probability, entropy and gradient, NaN, on CPU and CUDA alike.
#pragma once

#include "row_math.h"

namespace fdiv_ops {

template <typename A>
struct RowMoments {
  A m, ones, rest, w;

  static FDIV_HD RowMoments empty() { return {-pos_inf<A>(), A(0), A(0), A(0)}; }

  // Re-expressed relative to a new max M = nan_max(m, M): every present term joins `rest`. One exp.
  // A NaN max poisons every field, so the row's results are NaN whatever is added later.
  FDIV_HD void raise_max(A M) {
    M = nan_max(m, M);
    if (M != M) {
      *this = {M, M, M, M};
      return;
    }
    if (M == m) return;
    if (ones == A(0) && rest == A(0)) {  // empty so far: no -inf - M
      m = M;
      return;
    }
    const A d = m - M, sc = fexp(d), total = ones + rest;
    w = sc * (w + d * total);
    rest = sc * total;
    ones = A(0);
    m = M;
  }

  // One term e^d, d = s - m <= 0, relative to the current max (the caller raised m first).
  FDIV_HD void add_relative(A d, A e) {
    if (d == A(0)) {
      ones += A(1);
    } else {
      rest += e;
      if (e != A(0)) w += e * d;  // e^d d -> 0 as d -> -inf, never 0 * inf
    }
  }

  static FDIV_HD RowMoments merge(RowMoments a, RowMoments b) {
    const A M = nan_max(a.m, b.m);
    if (is_neg_inf(M)) return empty();
    a.raise_max(M);
    b.raise_max(M);
    return {M, a.ones + b.ones, a.rest + b.rest, a.w + b.w};
  }

  // log S; only for a row with a finite (or NaN) max, whose `ones` is then >= 1.
  FDIV_HD A log_sum() const { return flog1p((ones - A(1)) + rest); }
  FDIV_HD A entropy(A log_s) const { return log_s + (-w) / (ones + rest); }
};

}  // namespace fdiv_ops
