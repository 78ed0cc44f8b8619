// CPU kernel of f_divergence_loss, dense teacher (the formulas: include/fdiv_ops/f_divergence.h; the
// categorical numerics: include/fdiv_ops/divergences.h). Chunks of rows per OpenMP thread (api.cpp); per row r
// with student logits z (Vs), teacher t (Vt), Vc = min(Vs, Vt), x = z/T, y = t/T (y = t for teacher log-probs):
//
//   pass B  per block of 512 entries: the block maximum bm (a +inf entry makes the row NaN, row_math.h) and
//           minimum (is there a -inf?), then e = 2^(x log2 e - bm log2 e) over the same entries from L1, stored in
//           a per-thread scratch row (e_q and e_p, Vs each); a NaN entry makes its e and so the block sum NaN
//           (the NaN rule at no cost per entry); afterwards per-block scales turn e into probabilities
//           (q = e_q qscale_b, p = e_p pscale_b) and give LSE(x), LSE(y)
//   pass C  l = log(p/q) = (t - z)/T - (LSE(y) - LSE(x)), from the logits (a common rounding of the LSEs then
//           shifts every l alike, which moves the shifted loss only at second order); loss = sum q f~ and
//           S = sum q psi~ (shifted forms, near-r = 1 polynomials in l: kernels.h); q psi~ overwrites e_p.
//           One multiversioned function per divergence, with and without the dropped-entry (-inf) logic.
//   pass D  grad_j = scale/T (q psi~_j - q_j S)  (dropped and student-only entries: q psi~ = c1 q), written once
//   hard term (labels): + w (LSE_1(z) - z_y) in the loss, + scale w (softmax(z)_j - [j=y]) in pass D, with
//           LSE_1 at temperature 1 (a max and an exp pass over z only when T != 1)
// Row sums: float within a block of 512 entries (so every loop vectorises at the full float width), float64
// across blocks.
//
// Transcendentals per element and pass (float32, teacher logits; the history: three passes with max + exp for
// the LSEs and the categorical forms from log-probabilities in passes 2 and 3, then these four passes):
//   pass B    2 exp2 (one per side; 2 exp before)                      0 log
//   pass C    forward_kl, reverse_kl, jeffreys: 0 (1 exp before for the KLs)
//             js, gkd_jsd, softened_rkl, skew_*: 1 exp + 1 log1p of [0, 1] (js / gkd_jsd: 3 exp + 1 log1p before)
//             squared_hellinger 2 sqrt, total_variation 1 expm1, pearson / neyman 1 exp + 1 expm1, alpha
//             1 exp + 2 expm1
//   pass D    0 (2 exp before for forward_kl, 1 for reverse_kl, 2 exp + 1 log1p for js / gkd_jsd); with labels
//             at T != 1, 1 exp (the temperature-1 softmax)
//   totals    forward_kl 5 -> 2, reverse_kl 4 -> 2, js / gkd_jsd 9 -> 4 per element.
//   Per row, not per element: one exp2 per block of 512 and one log per side. Teacher log-probs: 1 exp2 per
//   teacher entry (its block maxima too, no normalisation). Every exp here is 2^w by one degree-6 polynomial
//   times 2^n (vec_math.h); log1p of [0, 1] is Cephes' polynomial after a one-compare reduction.
// Cost on an AVX-512 core (Zen 4, x86-64-v4 clone, instructions per 16 entries of the innermost loops; the
// fused multiply-add/multiply pipe takes one 16-wide op per cycle): pass B 2 x (3 for the max sweep + 18 for
// exp2 and its store); pass C forward_kl 34 (23 multiply-adds: 14 of them the two near polynomials),
// reverse_kl 38, js / gkd_jsd ~110; pass D 4. Measured at rows 2048 x V 32000 fp32, 1 thread, the
// forward_kl kernel takes ~1.3 ns per element (~1.2 of it arithmetic: the same rows resident in cache).
//
// Bytes per row: pass B reads z and t once from memory (the next row's are prefetched into L2 during this
// row's pass C, and this row's gradient too: without these prefetches the kernel is ~25% slower) and writes the
// 2 scratch rows; C reads z, t and the scratch from L2 and rewrites one scratch row; D reads the scratch and
// writes the gradient. For fp32 and V = 32000 the row pair and the scratch are 512 KB, inside a core's L2;
// memory sees one read of each input and one write of the gradient (whose fresh pages api.cpp asks to be huge).
// In place: grad may alias the student row: passes B and C read all of z before pass D writes, and pass D
// reads z_j (hard term at T != 1) before it writes g_j.
// Every hot loop is `#pragma omp simd`, branch-free, inside target_clones functions (x86-64-v4/v3/baseline).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fdiv_ops/cpu_clones.h"
#include "fdiv_ops/cpu_types.h"
#include "fdiv_ops/f_divergence.h"
#include "fdiv_ops/row_math.h"
#include "kernels.h"

namespace fdiv_ops::fdiv_cpu {

#define FDIV_INLINE __attribute__((always_inline)) inline

using M = VecMath;
using cpu::to_float;

template <typename A>
constexpr A kInf = std::numeric_limits<A>::infinity();

template <typename T>
FDIV_INLINE acc_t<T> load(const T* x, int64_t j) {
  return static_cast<acc_t<T>>(to_float(x[j]));
}

// The row maximum, NaN counted as +inf (poison_max); only the hard term's T = 1 log-sum-exp needs it alone.
template <typename T, typename A = acc_t<T>>
FDIV_INLINE A row_max(const T* x, int64_t n) {
  A mx = -kInf<A>;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = poison_max(mx, load(x, j));
  return mx;
}

// 2^w in pass B (vec_math.h; libm for float64).
FDIV_INLINE float row_exp2(float w) { return vec::exp2_bounded(w); }
FDIV_INLINE double row_exp2(double w) { return std::exp2(w); }

template <typename A>
constexpr A kLog2e = A(1.44269504088896340735992468100189214);
constexpr double kLn2 = 0.693147180559945309417232121458176568;

template <typename T, typename A = acc_t<T>>
FDIV_INLINE double exp_sum(const T* x, int64_t n, A scale, A shift) {
  double sum = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    A part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t j = b0; j < b1; ++j) part += row_exp2(load(x, j) * scale - shift);
    sum += static_cast<double>(part);
  }
  return sum;
}

// One side of a row after pass B.
template <typename A>
struct SideExp {
  bool poisoned;  // a NaN or +inf entry (the NaN rule)
  bool dead;      // every entry -inf
  double lse;     // LSE(x c2) ln 2 = LSE(x / T) for logits; 0 for log-probs
  double total;   // sum of the probabilities (1 for logits; sum exp(t) as given for log-probs)
  double tail;    // the part of total from entries j >= n_split
  double m, rel;  // lse = m ln 2 + log(rel) (logits): m the row maximum of x c2, rel the sum relative to it
  bool neg_inf;   // some entry is -inf (pass C then takes its loop with the dropped-entry logic)
};

// Pass B for one side, x[0, n) with scale c2 = log2(e) / T, one block of kBlock entries at a time: the block's
// maximum bm and minimum (the only sweep that reads x from memory), then e_j = 2^(x_j c2 - bm c2) <= 1 over the same
// entries (from L1), stored in out for j < n_split (and beyond when store_tail); the block sums of the entries
// below and above n_split go to bsum / btail and bm c2 to bmax. Then the per-block factors scale_b with p_j = e_j
// scale_b: 2^(bm_b c2 - M) / S for logits (M the row maximum, S the total relative to it), 2^(bm_b c2) for log-probs
// used as given (normalise false). Fusing the max into this sweep (instead of a max pass, then an exp pass) reads each
// row from DRAM once.
// The NaN rule costs no work per entry: a +inf entry makes bm +inf, and a NaN entry (which the max may drop)
// makes its e, hence the block sum, NaN (exp2_bounded propagates NaN); a block whose maximum is -inf (only -inf
// and NaN entries) is checked entry by entry, which is rare. The minimum says whether some entry is -inf.
template <typename T, typename A = acc_t<T>>
FDIV_INLINE SideExp<A> side_exp(const T* x, int64_t n, int64_t n_split, bool store_tail, A c2, bool normalise, A* out,
                                A* bmax, A* bsum, A* btail, A* scale) {
  const int64_t nb = num_blocks(n);
  const SideExp<A> poisoned{true, false, 0, 0, 0, 0, 0, false};
  A row_m = -kInf<A>;
  bool neg_inf = false;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t b0 = b * kBlock, b1 = std::min(n, b0 + kBlock), s1 = std::max(b0, std::min(b1, n_split));
    A bm = -kInf<A>, bmin = kInf<A>;
#pragma omp simd reduction(max : bm) reduction(min : bmin)
    for (int64_t j = b0; j < b1; ++j) {
      const A v = load(x, j);
      bm = v > bm ? v : bm;
      bmin = v < bmin ? v : bmin;
    }
    if (bm != bm || bm == kInf<A>) return poisoned;
    neg_inf |= bmin == -kInf<A>;
    A head = 0, tail = 0;
    if (bm == -kInf<A>) {  // a block of -inf (and maybe NaN): e = 0 (2^(-inf + inf) would be NaN)
      for (int64_t j = b0; j < b1; ++j)
        if (load(x, j) != load(x, j)) return poisoned;
      const int64_t s2 = store_tail ? b1 : s1;
#pragma omp simd
      for (int64_t j = b0; j < s2; ++j) out[j] = A(0);
    } else {
      const A shift = bm * c2;
#pragma omp simd reduction(+ : head)
      for (int64_t j = b0; j < s1; ++j) {
        const A e = row_exp2(load(x, j) * c2 - shift);
        out[j] = e;
        head += e;
      }
      if (store_tail) {
#pragma omp simd reduction(+ : tail)
        for (int64_t j = s1; j < b1; ++j) {
          const A e = row_exp2(load(x, j) * c2 - shift);
          out[j] = e;
          tail += e;
        }
      } else {
#pragma omp simd reduction(+ : tail)
        for (int64_t j = s1; j < b1; ++j) tail += row_exp2(load(x, j) * c2 - shift);
      }
      if (head + tail != head + tail) return poisoned;  // a NaN entry
    }
    bmax[b] = bm * c2;
    bsum[b] = head;
    btail[b] = tail;
    row_m = bmax[b] > row_m ? bmax[b] : row_m;
  }
  if (row_m == -kInf<A>) return {false, true, 0, 0, 0, 0, 0, true};
  double rel = 0, rel_tail = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const double f = std::exp2(double(bmax[b]) - double(row_m));  // 0 for a block of -inf
    scale[b] = A(f);
    rel += f * (double(bsum[b]) + double(btail[b]));
    rel_tail += f * double(btail[b]);
  }
  if (normalise) {
    for (int64_t b = 0; b < nb; ++b) scale[b] = A(double(scale[b]) / rel);
    return {false, false, double(row_m) * kLn2 + std::log(rel), 1.0, rel_tail / rel, double(row_m), rel, neg_inf};
  }
  const double top = std::exp2(double(row_m));
  for (int64_t b = 0; b < nb; ++b) scale[b] = A(std::exp2(double(bmax[b])));
  return {false, false, 0.0, top * rel, top * rel_tail, double(row_m), rel, neg_inf};
}

template <typename T>
FDIV_INLINE void fill_row(T* g, int64_t n, acc_t<T> value) {
  const T v = cpu::from_float<T>(value);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) g[j] = v;
}

// The row constants of pass C.
template <typename A>
struct RowState {
  A inv_t, t_scale;  // x = z inv_t, y = t t_scale
  A t_mul;           // 1, or T for teacher log-probs: y - x = (t t_mul - z) inv_t either way
  A shift;           // LSE(y) - LSE(x), so l = (y - x) - shift
  A lse_z, lse_t;    // log q = x - lse_z, log p = y - lse_t
  A c1;
};

struct TermSums {
  double loss, s, dropped_q, dropped_p;
};

// While pass C computes on one row (from L2), the next row's logits and this row's gradient are fetched into
// L2 one block ahead of their use, so pass B's sweep of the next row and pass D's stores find them there and
// the DRAM traffic overlaps the arithmetic instead of stalling it.
template <typename T>
struct Prefetch {
  const T* z_next;  // null: no next row in this thread's range
  const T* t_next;
  T* g;
  FDIV_INLINE static void lines(const void* base, int64_t begin, int64_t end, bool write) {
    const char* p = static_cast<const char*>(base);
    for (int64_t off = begin * int64_t(sizeof(T)); off < end * int64_t(sizeof(T)); off += 64) {
      if (write)
        __builtin_prefetch(p + off, 1, 2);
      else
        __builtin_prefetch(p + off, 0, 2);
    }
  }
  FDIV_INLINE void block(int64_t b0, int64_t b1) const {
    lines(g, b0, b1, true);
    if (z_next == nullptr) return;
    lines(z_next, b0, b1, false);
    lines(t_next, b0, b1, false);
  }
};

// Pass C over the shared vocabulary [0, n): sum q f~, sum of the stored q psi~ (c1 q where dropped), and the
// dropped masses; q psi~ replaces e_p in the scratch. q = e_q qscale[block], p = e_p pscale[block]. Without
// -inf entries in either row (kDrops false) every entry is kept and the selects go (7% of the kernel time).
template <typename T, typename Div, bool kDrops, typename A = acc_t<T>>
FDIV_INLINE TermSums dense_terms(const T* z, const T* t, int64_t n, const RowState<A>& rs, const CatParam<A>& param_in,
                                 const NearSeries<A>& near_in, const A* eq, const A* qscale, A* ep, const A* pscale,
                                 const Prefetch<T>& pf) {
  // Local copies: loop invariants the compiler can keep in registers (through the references, a store to ep
  // might alias them, and some of the 13 loops then stay scalar).
  const NearSeries<A> near = near_in;
  const CatParam<A> param = param_in;
  const A inv_t = rs.inv_t, t_scale = rs.t_scale, shift = rs.shift, lse_z = rs.lse_z, lse_t = rs.lse_t;
  const A c1 = rs.c1, t_mul = rs.t_mul;
  TermSums out{0, 0, 0, 0};
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    pf.block(b0, b1);
    const A qs = qscale[b0 / kBlock], ps = pscale[b0 / kBlock];
    A loss = 0, s = 0, dq = 0, dp = 0;
#pragma omp simd reduction(+ : loss, s, dq, dp)
    for (int64_t j = b0; j < b1; ++j) {
      const A zr = load(z, j), tr = load(t, j);
      const A x = zr * inv_t, y = tr * t_scale;
      const bool keep = !kDrops || ((zr > -kInf<A>)&(tr > -kInf<A>));  // NaN and +inf rows never get here
      // y - x from the logits (t - z exact when they are close); no select on a loop invariant here: GCC
      // unswitches the loop on it and then leaves both copies scalar.
      const A d = (tr * t_mul - zr) * inv_t;
      const A q = eq[j] * qs, p = ep[j] * ps;
      const CatPoint<A> e{
          q, p, keep ? d - shift : A(0), keep ? x - lse_z : A(0), keep ? y - lse_t : A(0), cat_dead_zone(x, y, shift)};
      A qf, qpsi;
      cpu_cat_terms<Div, M>(e, param, near, &qf, &qpsi);
      if constexpr (kUnboundedPsi<Div>) qpsi = finite_or_nan(qpsi);
      const A stored = keep ? qpsi : c1 * q;
      ep[j] = stored;
      loss += keep ? qf : A(0);
      s += stored;
      if constexpr (kDrops) {
        dq += keep ? A(0) : q;
        dp += keep ? A(0) : p;
      }
    }
    out.loss += static_cast<double>(loss);
    out.s += static_cast<double>(s);
    out.dropped_q += static_cast<double>(dq);
    out.dropped_p += static_cast<double>(dp);
  }
  return out;
}

// Pass D, block by block: g_j = coef (q psi~_j - q_j S) for j < vc (q psi~ in ep), coef q_j (c1 - S) past it.
// kHard: 0 none, 1 hard term with softmax(z) = q (T = 1), 2 with softmax(z)_j = exp(z_j - lse_1).
template <int kHard, typename T, typename A = acc_t<T>>
FDIV_INLINE void dense_grad(const T* z, T* g, int64_t vc, int64_t vs, const A* eq, const A* qscale, const A* ep, A coef,
                            A s, A c1, A hard_coef, int64_t y, A lse_1) {
  const A tail = coef * (c1 - s);  // entries past the teacher's vocabulary: dropped, q psi~ = c1 q
  for (int64_t b0 = 0; b0 < vs; b0 += kBlock) {
    const int64_t b1 = std::min(vs, b0 + kBlock), s1 = std::max(b0, std::min(b1, vc));
    const A qs = qscale[b0 / kBlock];
#pragma omp simd
    for (int64_t j = b0; j < s1; ++j) {
      const A q = eq[j] * qs;
      A gj = coef * (ep[j] - q * s);
      if constexpr (kHard != 0) {
        const A q1 = kHard == 1 ? q : M::exp(load(z, j) - lse_1);
        gj += hard_coef * (q1 - (j == y ? A(1) : A(0)));
      }
      g[j] = cpu::from_float<T>(gj);
    }
#pragma omp simd
    for (int64_t j = s1; j < b1; ++j) {
      const A q = eq[j] * qs;
      A gj = q * tail;
      if constexpr (kHard != 0) {
        const A q1 = kHard == 1 ? q : M::exp(load(z, j) - lse_1);
        gj += hard_coef * (q1 - (j == y ? A(1) : A(0)));
      }
      g[j] = cpu::from_float<T>(gj);
    }
  }
}

// Scratch of one thread for a dense row: e_q and e_p (Vs each), then the block arrays of pass B.
template <typename A>
struct RowScratch {
  A *eq, *ep, *bmax, *bsum, *btail, *qscale, *pscale;
};
template <typename A>
FDIV_INLINE RowScratch<A> row_scratch(A* base, int64_t vs, int64_t nb) {
  return {base,
          base + vs,
          base + 2 * vs,
          base + 2 * vs + nb,
          base + 2 * vs + 2 * nb,
          base + 2 * vs + 3 * nb,
          base + 2 * vs + 4 * nb};
}

// Pass C of one divergence, both variants (with and without -inf entries), behind one pointer.
template <typename T>
using PassC = TermSums (*)(bool drops, const T* z, const T* t, int64_t n, const RowState<acc_t<T>>& rs,
                           const CatParam<acc_t<T>>& param, const NearSeries<acc_t<T>>& near, const acc_t<T>* eq,
                           const acc_t<T>* qscale, acc_t<T>* ep, const acc_t<T>* pscale, const Prefetch<T>& pf);

template <typename T>
FDIV_INLINE void dense_row(const FDivergenceArgs& a, int64_t r, bool has_next, const DenseSetup<acc_t<T>>& setup,
                           PassC<T> pass_c, const RowScratch<acc_t<T>>& w) {
  using A = acc_t<T>;
  const int64_t vs = a.student_vocab, vt = a.teacher_vocab, vc = std::min(vs, vt);
  const T* z = static_cast<const T*>(a.student) + r * vs;
  const T* t = static_cast<const T*>(a.teacher) + r * vt;
  T* g = static_cast<T*>(a.grad) + r * vs;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature);
  const bool logprobs = a.teacher_is_logprobs;
  const A nan = std::numeric_limits<A>::quiet_NaN();
  const bool hard = a.labels != nullptr;
  const int64_t y = hard ? a.labels[r] : -1;
  if (scale == A(0)) {  // ignored row: never read
    *loss_out = A(0);
    fill_row(g, vs, A(0));
    return;
  }
  // Pass B, in base 2 (e = 2^(x c2 - m), c2 = log2(e)/T), with the block maxima and the NaN rule.
  const A c2 = inv_t * kLog2e<A>;
  const SideExp<A> sz = side_exp(z, vs, vc, true, c2, true, w.eq, w.bmax, w.bsum, w.btail, w.qscale);
  SideExp<A> st{false, true, 0, 0, 0, 0, 0, true};
  if (!sz.poisoned) {
    st = side_exp(t, vt, vc, false, logprobs ? kLog2e<A> : c2, !logprobs, w.ep, w.bmax, w.bsum, w.btail, w.pscale);
  }
  if (sz.poisoned || st.poisoned || (hard && (y < 0 || y >= vs))) {
    *loss_out = nan;  // NaN rule; a label outside [0, Vs): loud NaN rather than a read out of bounds
    fill_row(g, vs, nan);
    return;
  }
  if (sz.dead || st.dead) {  // a row of -inf on either side: 0 and 0, the hard term included
    *loss_out = A(0);
    fill_row(g, vs, A(0));
    return;
  }
  RowState<A> rs;
  rs.inv_t = inv_t;
  rs.t_scale = logprobs ? A(1) : inv_t;
  rs.t_mul = logprobs ? A(1) / inv_t : A(1);
  // LSE(y) - LSE(x) as (m_t - m_z) ln 2 + log(rel_t / rel_z): no rounding of two LSEs of ~log V each (the
  // shift moves every l, and total_variation's dead zone is a few ulps of l).
  rs.shift = A(logprobs ? -sz.lse : (st.m - sz.m) * kLn2 + std::log(st.rel / sz.rel));
  rs.lse_z = A(sz.lse);
  rs.lse_t = A(st.lse);
  rs.c1 = setup.c1;
  const Prefetch<T> pf{has_next ? z + vs : nullptr, t + vt, g};
  // Pass C, the one divergence-specific loop (its own multiversioned function: see FDIV_DENSE_TU).
  const TermSums sums =
      pass_c(sz.neg_inf || st.neg_inf, z, t, vc, rs, setup.param, setup.near, w.eq, w.qscale, w.ep, w.pscale, pf);
  // The entries past the teacher's vocabulary (student-only) are dropped; those past the student's
  // (teacher-only) drop their teacher mass. loss = sum q f~ + c1 (sum_kept p - sum_kept q), with
  // sum_all q = 1 and sum_all p = 1 exactly for logits (St, as given, for log-probs).
  const double dropped_q = sums.dropped_q + sz.tail, dropped_p = sums.dropped_p + st.tail;
  const double loss = sums.loss + double(setup.c1) * ((st.total - 1.0) - dropped_p + dropped_q);
  const A s = finite_or_nan(A(sums.s + double(setup.c1) * sz.tail));
  // Pass D, with the hard term (cross-entropy at temperature 1) when labels are given.
  const A coef = scale * inv_t;
  double ce = 0;
  if (!hard) {
    dense_grad<0>(z, g, vc, vs, w.eq, w.qscale, w.ep, coef, s, setup.c1, A(0), y, A(0));
  } else {
    const A hard_w = A(a.hard_weight);
    double lse_1 = sz.lse;
    if (inv_t != A(1)) {
      const A m1 = row_max(z, vs) * kLog2e<A>;
      lse_1 = double(m1) * kLn2 + std::log(exp_sum(z, vs, kLog2e<A>, m1));
    }
    ce = double(hard_w) * (lse_1 - double(load(z, y)));  // z_y read before pass D overwrites it (in place)
    if (inv_t == A(1))
      dense_grad<1>(z, g, vc, vs, w.eq, w.qscale, w.ep, coef, s, setup.c1, scale * hard_w, y, A(lse_1));
    else
      dense_grad<2>(z, g, vc, vs, w.eq, w.qscale, w.ep, coef, s, setup.c1, scale * hard_w, y, A(lse_1));
  }
  *loss_out = A(double(scale) * (loss + ce));
}

// One translation unit per dtype: `using DenseT = float;` then FDIV_DENSE_TU(f32) (dense_f32.cpp). Each
// divergence's pass C is its own multiversioned function (26 vectorised loops inlined into one function made
// GCC 12 leave some of them scalar in the AVX-512 clone), the other passes live in dense_rows_<SUFFIX>.
#define FDIV_PASS_C_FN(name, id, Functor, ...)                                                                   \
  FDIV_CPU_CLONES TermSums pass_c_##name(                                                                        \
      bool drops, const DenseT* z, const DenseT* t, int64_t n, const RowState<acc_t<DenseT>>& rs,                \
      const CatParam<acc_t<DenseT>>& param, const NearSeries<acc_t<DenseT>>& near, const acc_t<DenseT>* eq,      \
      const acc_t<DenseT>* qscale, acc_t<DenseT>* ep, const acc_t<DenseT>* pscale, const Prefetch<DenseT>& pf) { \
    return drops ? dense_terms<DenseT, Functor, true>(z, t, n, rs, param, near, eq, qscale, ep, pscale, pf)      \
                 : dense_terms<DenseT, Functor, false>(z, t, n, rs, param, near, eq, qscale, ep, pscale, pf);    \
  }
#define FDIV_PASS_C_PTR(name, ...) &pass_c_##name,
#define FDIV_DENSE_TU(SUFFIX)                                                                                \
  namespace {                                                                                                \
  FDIV_DIVERGENCES(FDIV_PASS_C_FN)                                                                           \
  const PassC<DenseT> kPassC[kNumDivergences] = {FDIV_DIVERGENCES(FDIV_PASS_C_PTR)};                         \
  }                                                                                                          \
  FDIV_CPU_CLONES void dense_rows_##SUFFIX(const FDivergenceArgs& a, int64_t begin, int64_t end,             \
                                           const DenseSetup<acc_t<DenseT>>& setup, acc_t<DenseT>* scratch) { \
    const RowScratch<acc_t<DenseT>> w =                                                                      \
        row_scratch(scratch, a.student_vocab, num_blocks(std::max(a.student_vocab, a.teacher_vocab)));       \
    const PassC<DenseT> pass_c = kPassC[static_cast<int>(setup.spec.kind)];                                  \
    for (int64_t r = begin; r < end; ++r) dense_row<DenseT>(a, r, r + 1 < end, setup, pass_c, w);            \
  }

}  // namespace fdiv_ops::fdiv_cpu
