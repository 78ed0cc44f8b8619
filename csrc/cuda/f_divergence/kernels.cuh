// CUDA kernels of f_divergence_loss, one instantiation per (dtype, divergence); the formulas are in
// include/fdiv_ops/f_divergence.h, the per-element pieces and the transcendental counts in row.cuh.
//
// Streaming kernel (every architecture; one 512-thread block per row, V up to any size):
//   pass 1   per side, an online (max, sum exp) over the row in global memory, one exp per element, merged
//            across the block (cub): student z/T, then teacher t/T (skipped for teacher_is_logprobs), then
//            z at temperature 1 (only for the hard term with T != 1)
//   pass 2   loss = sum q f~(p/q) + c1 (P_kept - Q_kept), S = sum q psi~ (shifted forms and near-r = 1
//            polynomials, divergences.h; row.cuh), block sum; the student-only / teacher-only tails' masses
//   pass 3   g_j = scale/T (q psi~_j [c1 q_j dropped] - q_j S) (+ the hard term), written once in the student's
//            dtype
// Bytes: z and t are read three times (twice for t with teacher_is_logprobs); at 2 blocks/SM a 128k bf16
// row pair is 512 KB, so about 135 MB of rows are in flight on an H100 against its 50 MB of L2: the
// re-reads of passes 2 and 3 mostly go to HBM. Hence, on sm_90:
// Cluster kernel (sm_90+, compute_90 images only): a row is split across a cluster of C <= 8 blocks (one
// slice of V / C columns each); every block copies its slice of z and t into shared memory (the only HBM
// reads), the per-block (max, sum) and (loss, S) partials are exchanged through distributed shared memory
// (each block merges all C partials in rank order, so every block holds bit-identical row statistics),
// and passes 2 and 3 read shared memory: z and t cross HBM once, g once.
// Top-k kernel: pass 1 over the student row, the k teacher tokens reduced across the block, one gradient
// pass over V and a second, after a barrier, that overwrites the k top-k entries.
//
// In place: g may alias z. The streaming kernel reads each z_j in the thread that then writes g_j; the
// cluster kernel reads its slice into shared memory before any block writes, and z_y (hard term) is read
// before the first cluster barrier.
// NaN: a NaN (or +inf) logit makes its row's LSE NaN (+inf), hence the row NaN (checked once per row); a NaN
// or +inf cached teacher log-prob is counted in pass 2 and makes the row NaN; exactly the CPU kernel's rule
// (row_math.h). A row of -inf on either side (for cached log-probs: no kept entry) gives 0 and 0, hard term
// included, as on the CPU.
// Top-k kernel numerics: the CPU's (topk.cpp), the plain closed forms Div::cat of the k + 1 categories with
// total_variation's dead zone, in the accumulation type (the CPU evaluates those O(k) terms in float64).
#pragma once

#include <cooperative_groups.h>

#include "row.cuh"

namespace fdiv_ops::token_kd {

namespace cg = cooperative_groups;

// Which LSE a pass-1 "side" is: 0 = z/T, 1 = t/T, 2 = z at T = 1 (hard term).
constexpr int kSides = 3;
constexpr int kWarps = kThreads / 32;

// Everything a dense kernel needs, resolved on the host. Rows hold < 2^31 entries (checked there).
template <typename A>
struct DenseParams {
  FDivergenceArgs a;
  CatConsts<A> cat;  // the divergence's categorical constants (row.cuh), from the host
  int chunk;         // cluster kernel: columns per block (a multiple of 16 / sizeof(T))
};

// The top-k kernel's: the plain categorical forms need the parameter only.
template <typename A>
struct TopkParams {
  FDivergenceTopkArgs a;
  CatParam<A> param;
};

// Shared memory of the block reductions (block_lse needs 2 values per warp, block_sum K per warp).
template <typename A, int K>
struct Scratch {
  A v[(K > 2 ? K : 2) * kWarps];
};

// A row's pointers and its uniform early outs.
template <typename T>
struct DenseRow {
  using A = acc_t<T>;
  const T* z;
  const T* t;
  T* g;
  A scale;
  int y;  // label (hard term) or -1
  bool hard, bad_label;
  __device__ DenseRow(const FDivergenceArgs& a, int64_t r) {
    z = static_cast<const T*>(a.student) + r * a.student_vocab;
    t = static_cast<const T*>(a.teacher) + r * a.teacher_vocab;
    g = static_cast<T*>(a.grad) + r * a.student_vocab;
    scale = static_cast<const A*>(a.row_scale)[r];
    hard = a.labels != nullptr;
    const int64_t label = hard ? a.labels[r] : -1;
    bad_label = hard && (label < 0 || label >= a.student_vocab);  // loud NaN rather than a read out of bounds
    y = bad_label ? -1 : static_cast<int>(label);
  }
};

// Row statistics from the merged LSEs (lse[1] unused for log-probs, lse[2] only for the hard term at T != 1).
// LSE(y) - LSE(x) as (m_t - m_z) + log(s_t / s_z): one rounding of the sums' ratio, not two of log V each (the
// shift moves every l, and total_variation's dead zone is a few ulps of l); exactly 0 for identical rows.
template <typename A>
__device__ __forceinline__ RowStats<A> make_stats(const FDivergenceArgs& a, const OnlineLse<A>* lse) {
  const A inv_t = A(a.inv_temperature);
  const bool logprobs = a.teacher_is_logprobs;
  RowStats<A> rs;
  rs.inv_t = inv_t;
  rs.t_scale = logprobs ? A(1) : inv_t;
  rs.t_mul = logprobs ? A(1) / inv_t : A(1);
  rs.logprobs = logprobs;
  rs.shift_z = lse[0].m;
  rs.log_sum_z = lse[0].log_sum();
  rs.shift_t = logprobs ? A(0) : lse[1].m;
  rs.log_sum_t = logprobs ? A(0) : lse[1].log_sum();
  rs.lse_shift = logprobs ? -(rs.shift_z + rs.log_sum_z) : (lse[1].m - lse[0].m) + flog(lse[1].s / lse[0].s);
  return rs;
}

// The temperature-1 LSE of z as (shift, log_sum): its own pass-1 side for the hard term at T != 1, else z's.
template <typename A>
__device__ __forceinline__ cuda::Pair<A> hard_lse(const FDivergenceArgs& a, const OnlineLse<A>* lse) {
  const OnlineLse<A>& l = lse[a.labels != nullptr && a.inv_temperature != 1.0 ? 2 : 0];
  return {l.m, l.log_sum()};
}

// Whether pass-1 side s runs (its LSE is needed).
__device__ __forceinline__ bool side_needed(const FDivergenceArgs& a, int s) {
  return s == 0 || (s == 1 && !a.teacher_is_logprobs) || (s == 2 && a.labels != nullptr && a.inv_temperature != 1.0);
}

// ---------------------------------------------------------------------------------------------------
// Blocks per SM the register allocation must allow: 2 (<= 64 registers) for the 32/16-bit kernels, whose
// streaming passes want the latency hiding; 1 for float64, where ptxas would otherwise cap the kernel at 64
// registers and spill the double-precision math.
template <typename T>
constexpr int kMinBlocks = sizeof(T) == 8 ? 1 : 2;

template <typename T, typename Div>
__global__ __launch_bounds__(kThreads, kMinBlocks<T>) void dense_stream_kernel(const DenseParams<acc_t<T>> p) {
  using A = acc_t<T>;
  __shared__ Scratch<A, kRowSums> scratch;
  __shared__ OnlineLse<A> sh_lse[kSides];
  __shared__ struct {
    A fill, scale, hard_loss, coef, hard_coef;
    int y;
    bool vec, vec_zg, done;
  } tail;

  const FDivergenceArgs& a = p.a;
  const int64_t r = blockIdx.x;
  const int Vs = static_cast<int>(a.student_vocab), Vt = static_cast<int>(a.teacher_vocab), Vc = Vs < Vt ? Vs : Vt;
  const DenseRow<T> row(a, r);
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  // Early outs: an ignored row gives 0 and 0, a bad label NaN, a row of -inf on either side (nothing kept)
  // 0 and 0. Each is uniform over the block, but the compiler cannot know it: the block reductions stay in
  // straight-line code (a finished row runs them on empty ranges) so that their warp shuffles are compiled
  // once, not twice (a converged and a divergent copy), and the row is filled at one site.
  const bool skip = row.scale == A(0) || row.bad_label;

  // Pass 1: one LSE per side, one loop (one copy of its code) for all of them; an unneeded side is empty.
#pragma unroll 1
  for (int s = 0; s < kSides; ++s) {
    const int n = skip || !side_needed(a, s) ? 0 : (s == 1 ? Vt : Vs);
    const OnlineLse<A> mine = lse_part(s == 1 ? row.t : row.z, n, s == 2 ? A(1) : A(a.inv_temperature));
    const OnlineLse<A> all = cuda::block_lse<kThreads>(mine, scratch.v);
    if (threadIdx.x == 0) sh_lse[s] = all;
  }
  __syncthreads();
  const RowStats<A> rs = make_stats(a, sh_lse);
  const bool nan_row = lse_poisoned(rs.shift_z) || lse_poisoned(rs.shift_t);  // NaN or +inf logits
  const bool done = skip || nan_row || is_neg_inf(rs.shift_z) || is_neg_inf(rs.shift_t);
  // z_y is read before the barriers that precede pass 3, so an in-place gradient cannot clobber it
  const A zy = row.hard && !done ? to_acc(row.z[row.y]) : A(0);

  // Pass 2. One 16-byte loop serves z, t (and g) when their rows are equally misaligned, else scalar loops.
  const bool vec_zt = cuda::same_head<T, kComputeBytes<T>>(row.z, row.t),
             vec_zg = cuda::same_head<T, kComputeBytes<T>>(row.z, row.g);
  if (threadIdx.x == 0) {  // what pass 3 needs, parked in shared memory: fewer registers live across pass 2
    tail.fill = row.scale != A(0) && (row.bad_label || nan_row) ? cuda::nan<A>() : A(0);
    tail.scale = row.scale;
    const cuda::Pair<A> h1 = hard_lse(a, sh_lse);
    tail.hard_loss = row.hard ? A(a.hard_weight) * -((zy - h1.first) - h1.second) : A(0);
    tail.coef = row.scale * rs.inv_t;
    tail.hard_coef = row.scale * A(a.hard_weight);
    tail.y = row.hard ? row.y : -1;
    tail.vec = vec_zt && vec_zg;
    tail.vec_zg = vec_zg;
    tail.done = done;
  }
  RowSums<A> part = sums_part<T, Div>(row.z, row.t, done ? 0 : Vc, vec_zt, rs, p.cat);
  tails_part<T>(row.z + Vc, done ? 0 : Vs - Vc, row.t + Vc, done ? 0 : Vt - Vc, rs, p.cat.c1, part);
  A sums[kRowSums] = {part.loss, part.s, part.m, part.bad, part.kept};
  cuda::block_sum<kThreads>(sums, scratch.v);  // ends with a barrier: tail is visible
  T* g = static_cast<T*>(a.grad) + r * a.student_vocab;
  // ignored or empty (for cached log-probs also: no kept entry): 0; a bad label or a NaN rule hit: NaN
  if (tail.done || sums[3] > A(0) || (rs.logprobs && sums[4] == A(0))) {
    const A v = sums[3] > A(0) ? cuda::nan<A>() : tail.fill;
    fill_row(g, Vs, v);
    if (threadIdx.x == 0) *loss_out = v;
    return;
  }
  const A c1 = p.cat.c1;
  if (threadIdx.x == 0)
    *loss_out = tail.scale * (sums[0] + c1 * (sums[2] - (rs.logprobs ? A(1) : A(0))) + tail.hard_loss);

  // Pass 3.
  const T* z = static_cast<const T*>(a.student) + r * a.student_vocab;
  const T* t = static_cast<const T*>(a.teacher) + r * a.teacher_vocab;
  const cuda::Pair<A> h1 = hard_lse(a, sh_lse);
  const GradCoefs<A> gc{tail.coef, finite_or_nan(sums[1]), tail.hard_coef, tail.y, h1.first, h1.second};
  grad_part<T, Div>(z, t, g, Vc, 0, tail.vec, rs, p.cat, gc);
  if (Vs > Vc) grad_student_only<T>(z + Vc, g + Vc, Vs - Vc, Vc, tail.vec_zg, rs, c1, gc);
}

// ---------------------------------------------------------------------------------------------------
// Cluster kernel: blockIdx.x = row * C + rank (a 1-D cluster of C blocks per row). Block `rank` owns the
// columns [rank chunk, (rank+1) chunk) of both rows; chunk is a multiple of N = 16 / sizeof(T), so every
// slice starts at its row's own 16-byte phase, and the shared copy keeps that phase (offset (N - head) % N),
// so the same 16-byte loop runs over global and shared memory. __launch_bounds__(512, 2): two blocks per SM
// (<= 64 registers), one loading from HBM while the other computes.
template <typename T>
__host__ __device__ constexpr int cluster_pad() {
  return Vec16<T>::kN;
}

template <typename T, typename Div>
__global__ __launch_bounds__(kThreads, 2) void dense_cluster_kernel(const DenseParams<acc_t<T>> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using A = acc_t<T>;
  constexpr int N = Vec16<T>::kN;
  __shared__ Scratch<A, kRowSums> scratch;
  __shared__ OnlineLse<A> part_lse[kSides];  // this block's partials, read by every block of the cluster
  __shared__ RowSums<A> part_sum;
  __shared__ OnlineLse<A> sh_lse[kSides];  // the merged row statistics
  __shared__ A sh_s, sh_zy;
  __shared__ struct {
    T* g;
    A fill, coef, hard_coef;
    int y, b, nz, nc;
    bool vec, vec_zg, done;
  } tail;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  cg::cluster_group cluster = cg::this_cluster();
  const FDivergenceArgs& a = p.a;
  const int C = static_cast<int>(cluster.num_blocks()), rank = static_cast<int>(cluster.block_rank());
  const int64_t r = blockIdx.x / C;
  const int Vs = static_cast<int>(a.student_vocab), Vt = static_cast<int>(a.teacher_vocab), Vc = Vs < Vt ? Vs : Vt;
  const int V = Vs > Vt ? Vs : Vt, b = rank * p.chunk, e = V - b < p.chunk ? V : b + p.chunk;
  auto span = [&](int end) { return (end < e ? end : e) - b > 0 ? (end < e ? end : e) - b : 0; };
  const int nz = span(Vs), nt = span(Vt), nc = span(Vc);  // this block's z, t and common columns
  const DenseRow<T> row(a, r);
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  // The early outs of the streaming kernel, uniform over the whole cluster (one row), with the reductions
  // and cluster barriers in straight-line code (a finished row runs them on empty ranges).
  const bool skip = row.scale == A(0) || row.bad_label;
  const int oz = (N - vec_head<T>(row.z + b, N)) % N, ot = (N - vec_head<T>(row.t + b, N)) % N;
  T* sz = reinterpret_cast<T*>(smem_raw) + oz;
  T* st = reinterpret_cast<T*>(smem_raw) + (p.chunk + cluster_pad<T>()) + ot;

  // Load: this block's slices of z and t into shared memory, at the rows' own 16-byte phase.
  auto copy = [&](const T* src, T* dst, int n) {
    vec_loop<N>(
        n, vec_head<T>(src, n), true, threadIdx.x, kThreads, [&](int j) { dst[j] = src[j]; },
        [&](int j0) { store_vec(dst, j0, load_vec(src, j0)); });
  };
  copy(row.z + b, sz, skip ? 0 : nz);
  copy(row.t + b, st, skip ? 0 : nt);
  if (row.hard && !skip && rank == 0 && threadIdx.x == 0) sh_zy = to_acc(row.z[row.y]);  // before g is written
  __syncthreads();

  // Pass 1 over shared memory; partials exchanged through distributed shared memory.
#pragma unroll 1
  for (int s = 0; s < kSides; ++s) {
    const int n = skip || !side_needed(a, s) ? 0 : (s == 1 ? nt : nz);
    const OnlineLse<A> mine = lse_part(s == 1 ? st : sz, n, s == 2 ? A(1) : A(a.inv_temperature));
    const OnlineLse<A> all = cuda::block_lse<kThreads>(mine, scratch.v);
    if (threadIdx.x == 0) part_lse[s] = all;
  }
  cluster.sync();  // #1: every block's pass-1 partials are visible (also a block barrier)
  if (threadIdx.x < kSides) {
    OnlineLse<A> all = cuda::empty_lse<A>();
    for (int k = 0; k < C; ++k) all = OnlineLse<A>::merge(all, cluster.map_shared_rank(part_lse, k)[threadIdx.x]);
    sh_lse[threadIdx.x] = all;  // merged in rank order: bit-identical in every block
  }
  __syncthreads();
  const RowStats<A> rs = make_stats(a, sh_lse);                               // the same in every block
  const bool nan_row = lse_poisoned(rs.shift_z) || lse_poisoned(rs.shift_t);  // NaN or +inf logits
  const bool done = skip || nan_row || is_neg_inf(rs.shift_z) || is_neg_inf(rs.shift_t);

  // Pass 2 over shared memory.
  const bool vec_zt = cuda::same_head<T, kComputeBytes<T>>(sz, st),  // the shared copies keep the rows' phase
      vec_zg = cuda::same_head<T, kComputeBytes<T>>(sz, row.g + b);
  if (threadIdx.x == 0) {  // what pass 3 needs, parked in shared memory: fewer registers live across pass 2
    tail.g = row.g + b;
    tail.fill = row.scale != A(0) && (row.bad_label || nan_row) ? cuda::nan<A>() : A(0);
    tail.coef = row.scale * rs.inv_t;
    tail.hard_coef = row.scale * A(a.hard_weight);
    tail.y = row.hard ? row.y : -1;
    tail.b = b;
    tail.nz = nz;
    tail.nc = nc;
    tail.vec = vec_zt && vec_zg;
    tail.vec_zg = vec_zg;
    tail.done = done;
  }
  RowSums<A> mine = sums_part<T, Div>(sz, st, done ? 0 : nc, vec_zt, rs, p.cat);
  tails_part<T>(sz + nc, done ? 0 : nz - nc, st + nc, done ? 0 : nt - nc, rs, p.cat.c1, mine);
  A sums[kRowSums] = {mine.loss, mine.s, mine.m, mine.bad, mine.kept};
  cuda::block_sum<kThreads>(sums, scratch.v);
  if (threadIdx.x == 0) part_sum = {sums[0], sums[1], sums[2], sums[3], sums[4]};
  cluster.sync();  // #2: every block's pass-2 partials are visible; every block is done with part_lse
  if (threadIdx.x == 0) {
    RowSums<A> all{A(0), A(0), A(0), A(0), A(0)};
    for (int k = 0; k < C; ++k) {  // in rank order: the same sums in every block
      const RowSums<A> o = *cluster.map_shared_rank(&part_sum, k);
      all = {all.loss + o.loss, all.s + o.s, all.m + o.m, all.bad + o.bad, all.kept + o.kept};
    }
    sh_s = finite_or_nan(all.s);
    if (all.bad > A(0)) {  // the NaN rule, hit by a cached teacher log-prob: the whole row is NaN
      tail.done = true;
      tail.fill = row.scale != A(0) ? cuda::nan<A>() : A(0);
    }
    if (rs.logprobs && all.kept == A(0)) tail.done = true;  // a cached teacher row of -inf: 0 and 0 (or NaN fill)
    const cuda::Pair<A> h1 = hard_lse(a, sh_lse);
    const A ce = row.hard ? -((sh_zy - h1.first) - h1.second) : A(0);
    const A loss = all.loss + p.cat.c1 * (all.m - (rs.logprobs ? A(1) : A(0)));
    if (rank == 0) *loss_out = tail.done ? tail.fill : row.scale * (loss + (row.hard ? A(a.hard_weight) * ce : A(0)));
  }
  cluster.barrier_arrive();  // done reading the others' part_sum; waited for before leaving
  __syncthreads();
  if (tail.done) {
    fill_row(tail.g, tail.nz, tail.fill);
  } else {
    // Pass 3: shared memory in, the gradient slice out (the only HBM writes).
    const cuda::Pair<A> h1 = hard_lse(a, sh_lse);
    const GradCoefs<A> gc{tail.coef, sh_s, tail.hard_coef, tail.y, h1.first, h1.second};
    const int nc3 = tail.nc, nz3 = tail.nz, b3 = tail.b;
    grad_part<T, Div>(sz, st, tail.g, nc3, b3, tail.vec, rs, p.cat, gc);
    if (nz3 > nc3) grad_student_only<T>(sz + nc3, tail.g + nc3, nz3 - nc3, b3 + nc3, tail.vec_zg, rs, p.cat.c1, gc);
  }
  cluster.barrier_wait();
#else
  __trap();  // launched only where the loaded image is compute_90+ (image_supports_clusters)
#endif
}

// ---------------------------------------------------------------------------------------------------
template <typename T, typename Div>
__global__ __launch_bounds__(kThreads, kMinBlocks<T>) void topk_kernel(const TopkParams<acc_t<T>> p) {
  using A = acc_t<T>;
  constexpr int N = Vec16<T>::kN;
  __shared__ Scratch<A, 5> scratch;

  const FDivergenceTopkArgs& a = p.a;
  const int64_t r = blockIdx.x;
  const int V = static_cast<int>(a.vocab), k = static_cast<int>(a.k);
  const T* z = static_cast<const T*>(a.student) + r * a.vocab;
  const int64_t* idx = a.indices + r * a.k;
  const A* tl = static_cast<const A*>(a.teacher_logprobs) + r * a.k;
  T* g = static_cast<T*>(a.grad) + r * a.vocab;
  A* loss_out = static_cast<A*>(a.row_loss) + r;
  const A scale = static_cast<const A*>(a.row_scale)[r];
  const A inv_t = A(a.inv_temperature);
  // Early outs, uniform over the block, with the reductions in straight-line code (see the dense kernel):
  // an ignored row or a student row of -inf give 0 and 0, an out-of-range index NaN (loud, never a read
  // out of bounds); one fill site.
  const bool skip = scale == A(0);
  const OnlineLse<A> all = cuda::block_lse<kThreads>(lse_part(z, skip ? 0 : V, inv_t), scratch.v);
  const A shift_z = all.m, log_sum_z = all.log_sum(), lse_shift = -(shift_z + log_sum_z);
  const bool nan_row = !skip && lse_poisoned(shift_z);  // NaN or +inf student logits
  const bool empty = skip || nan_row || is_neg_inf(shift_z);
  auto log_q = [&](A zv) { return (zv * inv_t - shift_z) - log_sum_z; };
  // One top-k token as topk.cpp's categories: l = lp - lq, the dead zone from x = z/T and lp (total_variation).
  auto point = [&](A zv, A lp) {
    const A lq = log_q(zv);
    return CatPoint<A>{fexp(lq), fexp(lp), lp - lq, lq, lp, cat_dead_zone(zv * inv_t, lp, lse_shift)};
  };

  // The k teacher tokens: their masses, and their loss / q psi terms (an out-of-range index is flagged).
  A sums[5] = {A(0), A(0), A(0), A(0), A(0)};  // q_top, p_top, loss, S, bad (index out of range, NaN rule)
  for (int i = threadIdx.x; i < (empty ? 0 : k); i += kThreads) {
    const int64_t j = idx[i];
    if (j < 0 || j >= V) {
      sums[4] += A(1);
      continue;
    }
    const CatPoint<A> e = point(to_acc(z[j]), tl[i]);
    sums[4] += poisoned(e.lq, e.lp) ? A(1) : A(0);  // the NaN rule (row.cuh): NaN/+inf in, a NaN row out
    sums[0] += e.q;
    sums[1] += e.p;
    const bool drop = is_neg_inf(e.lq) || is_neg_inf(e.lp);
    A qf, qpsi;
    cat_both<Div, false>(e, p.param, CatSeries<A>{}, &qf, &qpsi);
    sums[2] += drop ? A(0) : qf;
    sums[3] += drop ? A(0) : finite_or_nan(qpsi);
  }
  cuda::block_sum<kThreads>(sums, scratch.v);
  if (empty || sums[4] > A(0)) {
    const A fill = nan_row || (!empty && sums[4] > A(0)) ? cuda::nan<A>() : A(0);
    fill_row(g, V, fill);
    if (threadIdx.x == 0) *loss_out = fill;
    return;
  }
  // The bucket: the rest of each side's mass (clamped at 0 against rounding, NaN kept; 0 drops it), its terms
  // at x = log q_rest, shift 0 (topk.cpp), and psi_rest = q psi / q. Every thread evaluates it (the same values):
  // cheaper than a broadcast through shared memory and a barrier.
  const A q_rest = nan_max(A(1) - sums[0], A(0)), p_rest = nan_max(A(1) - sums[1], A(0));
  const A lq_rest = flog(q_rest), lp_rest = flog(p_rest);
  const bool kept = !is_neg_inf(lq_rest) && !is_neg_inf(lp_rest);
  const CatPoint<A> e_rest{q_rest, p_rest, lp_rest - lq_rest, lq_rest, lp_rest, cat_dead_zone(lq_rest, lp_rest, A(0))};
  A qf_rest = A(0), qpsi_rest = A(0);
  if (kept) cat_both<Div, false>(e_rest, p.param, CatSeries<A>{}, &qf_rest, &qpsi_rest);
  qpsi_rest = kept ? finite_or_nan(qpsi_rest) : A(0);
  const A s = finite_or_nan(sums[3] + qpsi_rest);
  if (threadIdx.x == 0) *loss_out = scale * (sums[2] + (kept ? qf_rest : A(0)));
  const A psi_rest = kept ? finite_or_nan(qpsi_rest / q_rest) : A(0);
  const A coef = scale * inv_t, rest_coef = finite_or_nan(psi_rest - s);

  auto rest = [&](A zv) { return from_acc<T>(coef * fexp(log_q(zv)) * rest_coef); };
  vec_loop<N>(
      V, vec_head<T>(z, V), kVectorised<T> && cuda::same_head<T>(z, g), threadIdx.x, kThreads,
      [&](int j) { g[j] = rest(to_acc(z[j])); },
      [&](int j0) {
        const Vec16<T> x = load_vec(z, j0);
        Vec16<T> out;
#pragma unroll
        for (int q = 0; q < N; ++q) out.v[q] = rest(to_acc(x.v[q]));
        store_vec(g, j0, out);
      });
  __syncthreads();  // the top-k entries below overwrite what other threads wrote above
  for (int i = threadIdx.x; i < k; i += kThreads) {
    const int64_t j = idx[i];
    const CatPoint<A> e = point(to_acc(z[j]), tl[i]);
    const bool drop = is_neg_inf(e.lq) || is_neg_inf(e.lp);
    const A qpsi = finite_or_nan(cat_one<Div, false, true>(e, p.param, CatSeries<A>{}));
    g[j] = from_acc<T>(coef * ((drop ? A(0) : qpsi) - e.q * s));
  }
}

}  // namespace fdiv_ops::token_kd
