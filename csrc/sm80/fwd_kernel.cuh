// Forward attention for sm80 and newer: FlashAttention-2's algorithm on mma.sync tensor cores.
//
// Dimension legend (params.h letters): B batch, T queries, S keys, N query heads, K kv heads
// (G = N / K), H head dim (runtime, multiple of 8, <= kHeadDim).
// Tiles (traits.h): kBlockM query rows per CTA, kBlockN keys per step, kHeadDim padded H.
//
// One CTA computes O[b, row0 : row0 + kBlockM, n, :] and its lse. Q stays in shared memory.
// With one stage (Traits::kStages), K and V tiles stream through one buffer each, so each
// load overlaps the other's math:
//
//   wait K[j]  | issue V[j]      | S = Q K[j]^T (mask boundary tiles)
//   wait V[j]  | issue K[j - 1]  | online softmax, O += P V[j]   (P stays in registers)
//
// With two stages, K and V of the next tile load into the other buffer pair during a whole
// step, behind one barrier per step:
//
//   wait K, V[j] | issue K, V[j - 1] | S = Q K[j]^T, online softmax, O += P V[j]
//
// Key tiles are walked from the last visible one down to the first; tiles wholly outside the
// window are never loaded, and only tiles crossing a window edge or S apply an element mask.
// The softmax rescales O only when a row max grows by more than 2^8 (softmax.cuh).
// Measured TFLOP/s and the tile choices are in traits.h.
//
// kExtras instantiates the extras of params.h (lengths, segments, bias, mask, softcap); a call
// without any runs the kExtras = false code, the dense kernel unchanged. With extras:
//   * lengths: valid_keys replaces S in every bound, so key tiles past it are never loaded and
//     the one crossing it is zero-filled past it; Q rows >= valid_rows are zero-filled and end
//     with O = 0 and lse = -inf (their sum is cleared before finalize), so they add no element
//     test to the other tiles;
//   * segments: a key tile whose (min, max) ids cannot meet the q-block's is skipped, never
//     loaded or multiplied: the walk goes from one visited tile straight to the next, and the
//     K/V prefetch is for that next visited tile. The first and last visited tiles are found
//     up front by all threads at once, among the key chunks the rows' chunk summaries name as
//     partners, so long runs of other documents cost no serial scan;
//   * step kinds: kElement tiles (every tile with bias, mask or softcap; tiles whose segment
//     ids are not one shared id) run extras_tile (common/softmax.cuh); kEdge tiles (window edges,
//     valid_keys) run mask_scores; the rest the fast step. With bias or softcap the scores
//     become natural-unit logits, so the softmax runs with scale 1 and the lse is
//     ln sum exp(logit).
#pragma once

#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <type_traits>

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/softmax.cuh"
#include "common/util.cuh"
#include "params.h"

namespace jax_flash::sm80 {

// Order of CTAs in the 1-D grid.
enum class FwdOrder : int {
  kRowBlocksFastest = 0,  // consecutive CTAs take consecutive q-blocks of one (b, n)
  kHeavyFirst = 1,        // consecutive CTAs take one q-block of every (b, n), last q-block
                          // first: with a causal mask the last q-blocks do the most work
};

// Main-loop step kinds (see the visit walk below).
inline constexpr int kFast = 0;     // every pair of the tile is seen: no mask
inline constexpr int kEdge = 1;     // window edges, valid_keys: mask_scores
inline constexpr int kElement = 2;  // segments that differ, bias, mask, softcap: extras_tile

template <class Traits, bool kExtras>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    fwd_kernel(const __grid_constant__ FwdParams params, int num_m_blocks, FwdOrder order) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int tid = threadIdx.x;

  // ---- which tile ----
  const int num_bh = params.b * params.n;
  int m_block, bh;
  if (order == FwdOrder::kHeavyFirst) {
    bh = blockIdx.x % num_bh;
    m_block = num_m_blocks - 1 - int(blockIdx.x / num_bh);
  } else {
    m_block = blockIdx.x % num_m_blocks;
    bh = blockIdx.x / num_m_blocks;
  }
  const int b = bh / params.n;
  const int head = bh % params.n;
  const int kv_head = head / params.group;
  const int row0 = m_block * kBlockM;
  const int rows = min(kBlockM, params.t - row0);
  const Window window{params.window_left, params.window_right};
  // With extras: the lengths of this batch row. rows_valid (rows of this block below
  // valid_rows) and key_end (valid_keys) replace rows and S in every bound.
  const Extras ex(params, b, head);  // unused (and not computed) without kExtras
  const int rows_valid = kExtras ? min(rows, ex.valid_rows - row0) : rows;
  const int key_end = kExtras ? ex.valid_keys : params.s;
  const Range keys = rows_valid > 0 ? window.keys_of_rows(row0, row0 + rows_valid, key_end)
                                    : Range{0, 0};

  Tensor gQ = make_tensor(
      make_gmem_ptr(static_cast<const Element*>(params.q) + b * params.q_batch_stride +
                    head * params.q_head_stride + int64_t(row0) * params.q_row_stride),
      Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(params.q_row_stride, _1{}));
  // Built where used (not hoisted above the main loop) to keep registers free inside it.
  auto o_tile = [&]() {
    return make_tensor(
        make_gmem_ptr(static_cast<Element*>(params.o) + b * params.o_batch_stride +
                      head * params.o_head_stride + int64_t(row0) * params.o_row_stride),
        Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(params.o_row_stride, _1{}));
  };
  auto lse_out = [&]() { return params.lse + (int64_t(b) * params.n + head) * params.t + row0; };
  typename Traits::GmemStore gmem_store;
  auto gmem_store_thr = gmem_store.get_thread_slice(tid);
  auto o_coord = [&]() {
    return gmem_store_thr.partition_D(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  };

  extern __shared__ __align__(128) char smem[];
  auto write_empty = [&]() {  // no row of this block sees any key: O = 0, lse = -inf
    Tensor tOgO = gmem_store_thr.partition_D(o_tile());
    Tensor zeros = make_fragment_like(tOgO);
    clear(zeros);
    store_tile_predicated(gmem_store, zeros, tOgO, o_coord(), rows, params.h);
    float* lse = lse_out();
    for (int r = tid; r < rows; r += Traits::kNThreads) lse[r] = -INFINITY;
  };
  if (keys.empty()) {
    write_empty();
    return;
  }
  int n_block_first = keys.lo / kBlockN;
  int n_block_last = ceil_div(keys.hi, kBlockN) - 1;
  // Key tiles inside this range are visible to every row as far as the window and the
  // lengths go: no element mask.
  const Range unmasked = window.keys_of_all_rows(row0, row0 + rows_valid, key_end);
  const int n_unmasked_lo = ceil_div(unmasked.lo, kBlockN);
  const int n_unmasked_hi = unmasked.hi / kBlockN - 1;

  // ---- extras: which key tiles to visit, and which step each runs ----
  // Step kinds: kFast (no mask), kEdge (window / length edges: mask_scores), kElement
  // (extras_tile). A visit is packed as n_block * 4 + kind; -1 = none.
  // With extras, edge tiles have their own step only up to hdim 128: at hdim 256 a third step
  // instantiation put the kernel's arrays in local memory (3.6 KB of stack), so there
  // extras_tile takes them (it applies the window and the lengths too).
  constexpr bool kEdgeSteps = !kExtras || kHeadDim <= 128;
  int2 row_ids = make_int2(0, 0);  // the q-block's (min, max) segment id
  const bool all_element = kExtras && (ex.per_element() || ex.transforms());
  auto classify = [&](int n_block) {  // -1: skip, else the step kind
    const bool edge = n_block > n_unmasked_hi || n_block < n_unmasked_lo;
    bool element = all_element;
    if (ex.has_segments()) {
      const int2 key_ids = ex.key_span(n_block * kBlockN, min((n_block + 1) * kBlockN, key_end));
      if (!Extras::spans_meet(row_ids, key_ids)) return -1;
      element |= !Extras::spans_all_match(row_ids, key_ids);
    }
    return element ? kElement : edge ? (kEdgeSteps ? kEdge : kElement) : kFast;
  };
  // The visit after n_block (walking down), or -1.
  auto next_visit = [&](int n_block) {
    for (int n = n_block - 1; n >= n_block_first; --n) {
      const int kind = classify(n);
      if (kind >= 0) return n * 4 + kind;
    }
    return -1;
  };
  if constexpr (kExtras) {
    if (ex.has_segments()) {
      row_ids = ex.row_span(row0, row0 + rows_valid);
      // First and last tiles that can hold a matching pair, all threads at once, among the
      // key chunks that may match the rows (for packed documents, the rows' documents). The
      // bounds sit at the end of the last V buffer, which the loop's first barrier separates
      // from its first load.
      const Range partners = ex.row_partners(row0, row0 + rows_valid);
      const int scan_first = max(n_block_first, partners.lo / kBlockN);
      const int scan_last = min(n_block_last, ceil_div(partners.hi, kBlockN) - 1);
      int* visit_bounds = reinterpret_cast<int*>(smem + Traits::kSmemBytes) - 2;
      if (tid == 0) {
        visit_bounds[0] = INT_MAX;
        visit_bounds[1] = -1;
      }
      __syncthreads();
      int lo = INT_MAX, hi = -1;
      for (int n = scan_first + tid; n <= scan_last; n += Traits::kNThreads) {
        const int2 key_ids = ex.key_span(n * kBlockN, min((n + 1) * kBlockN, key_end));
        if (Extras::spans_meet(row_ids, key_ids)) {
          lo = min(lo, n);
          hi = max(hi, n);
        }
      }
      lo = __reduce_min_sync(0xffffffffu, lo);
      hi = __reduce_max_sync(0xffffffffu, hi);
      if (tid % 32 == 0) {
        atomicMin(&visit_bounds[0], lo);
        atomicMax(&visit_bounds[1], hi);
      }
      __syncthreads();
      if (visit_bounds[1] < 0) {
        write_empty();
        return;
      }
      n_block_first = visit_bounds[0];
      n_block_last = visit_bounds[1];
    }
  }

  const Element* k_head = static_cast<const Element*>(params.k) + b * params.k_batch_stride +
                          kv_head * params.k_head_stride;
  const Element* v_head = static_cast<const Element*>(params.v) + b * params.v_batch_stride +
                          kv_head * params.v_head_stride;
  auto k_tile = [&](int n_block) {
    return make_tensor(make_gmem_ptr(k_head + int64_t(n_block) * kBlockN * params.k_row_stride),
                       Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_stride(params.k_row_stride, _1{}));
  };
  auto v_tile = [&](int n_block) {
    return make_tensor(make_gmem_ptr(v_head + int64_t(n_block) * kBlockN * params.v_row_stride),
                       Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_stride(params.v_row_stride, _1{}));
  };

  // ---- shared memory ----
  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)),
                          typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(sQ.data() + Int<Traits::kSmemQElems>{}, typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(sK.data() + Int<Traits::kSmemKVElems>{}, typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});

  typename Traits::GmemLoad gmem_load;
  auto gmem_load_thr = gmem_load.get_thread_slice(tid);
  Tensor tQsQ = gmem_load_thr.partition_D(sQ);
  Tensor tKsK = gmem_load_thr.partition_D(sK);
  Tensor tVsV = gmem_load_thr.partition_D(sV);
  Tensor tQcQ = gmem_load_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKVcKV = gmem_load_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // Stage s of a K or V smem tensor (or partition): the buffers of stage 1 follow those of
  // stage 0 by a multiple of the swizzle period, so offsetting the pointer is enough.
  auto at_stage = [](auto const& t, int stage) {
    return make_tensor(t.data() + stage * (2 * Traits::kSmemKVElems), t.layout());
  };
  // Only the tile holding key key_end - 1 can be partial, and it is the first one loaded (the
  // walk goes downwards) and a masked step, so other loads skip the row check.
  auto load_k = [&](int n_block, auto check_rows, int stage) {
    copy_tile_zfill<decltype(check_rows)::value>(gmem_load, gmem_load_thr.partition_S(k_tile(n_block)),
                                                 at_stage(tKsK, stage), tKVcKV,
                                                 key_end - n_block * kBlockN, params.h);
  };
  auto load_v = [&](int n_block, auto check_rows, int stage) {
    copy_tile_zfill<decltype(check_rows)::value>(gmem_load, gmem_load_thr.partition_S(v_tile(n_block)),
                                                 at_stage(tVsV, stage), tKVcKV,
                                                 key_end - n_block * kBlockN, params.h);
  };

  // The first visit: the last tile in range (dense), or the last visited one (extras).
  const int first_visit = kExtras ? n_block_last * 4 + classify(n_block_last) : 0;
  copy_tile_zfill(gmem_load, gmem_load_thr.partition_S(gQ), tQsQ, tQcQ, rows_valid, params.h);
  cp_async_fence();
  load_k(n_block_last, std::true_type{}, 0);
  if constexpr (Traits::kStages == 2) load_v(n_block_last, std::true_type{}, 0);
  cp_async_fence();

  // ---- mma partitions ----
  typename Traits::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_mma.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVt);  // (MMA, MMA_H, MMA_N)
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc_o);

  auto smem_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, mma);
  auto smem_copy_q_thr = smem_copy_q.get_thread_slice(tid);
  Tensor tSsQ = smem_copy_q_thr.partition_S(sQ);
  auto smem_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, mma);
  auto smem_copy_k_thr = smem_copy_k.get_thread_slice(tid);
  Tensor tSsK = smem_copy_k_thr.partition_S(sK);
  auto smem_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomT{}, mma);
  auto smem_copy_v_thr = smem_copy_v.get_thread_slice(tid);
  Tensor tOsVt = smem_copy_v_thr.partition_S(sVt);

  // Tile-local (row, col) of every score register, for the element mask and the lse rows.
  Tensor tScS = rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
  Tensor acc_o_rc = rowcol_view(acc_o);
  constexpr int kRows = decltype(size<0>(acc_o_rc))::value;
  OnlineSoftmax<kRows> softmax;

  // The math uses |scale| (and a floor that keeps 0 * inf out of masked scores); a negative
  // scale is honoured by negating Q once in shared memory, since scale * q.k = |scale| (-q).k.
  const float scale = fmaxf(fabsf(params.scale), FLT_MIN);
  const float scale_log2 = fmaxf(fabsf(params.scale_log2), FLT_MIN);
  // With bias or softcap the element path gives natural-unit logits: the softmax takes scale 1.
  const bool logits = kExtras && ex.transforms();
  const float softmax_scale = logits ? 1.f : scale;
  const float softmax_scale_log2 = logits ? 1.4426950408889634f : scale_log2;
  if (params.scale < 0.f) {
    cp_async_wait<1>();  // this thread's part of Q has landed; the loop's first barrier publishes it
    flip_sign_bits(tQsQ);
  }

  // One main-loop step; `kind` instantiates the mask. Separate instantiations (rather than
  // one runtime `if`) because the compiler if-converted the mask into every step: ~210 extra
  // predicated instructions per step at hdim 128.
  // next(n_block) gives the following visit (n_block * 4 + kind, or -1); it is called after
  // the scores' product is issued, so its loads of segment ranges overlap the mma.
  auto step = [&](int n_block, auto kind, auto next) {
    constexpr int kKind = decltype(kind)::value;
    // Only the tile holding key key_end - 1 can be partial, and it is an edge or element step.
    constexpr bool kMasked = kKind != kFast;
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cp_async_wait<0>();  // K[n_block] (and Q on the first step) have landed for this thread
    __syncthreads();     // ... for all threads; and every warp is done reading the previous V
    load_v(n_block, std::bool_constant<kMasked>{}, 0);
    cp_async_fence();

    gemm_smem_smem(mma, acc_s, tSrQ, tSrK, tSsQ, tSsK, smem_copy_q, smem_copy_k, smem_copy_q_thr,
                   smem_copy_k_thr);
    const int visit = next(n_block);
    Tensor scores = rowcol_view(acc_s);
    if constexpr (kKind == kEdge) mask_scores(scores, tScS, row0, n_block * kBlockN, window, key_end);
    if constexpr (kKind == kElement) {
      extras_tile(scores, tScS, row0, n_block * kBlockN, window, ex, scale, true);
    }

    cp_async_wait<0>();
    __syncthreads();  // V[n_block] visible to all; every warp is done reading K[n_block]
    if (visit >= 0) {
      load_k(visit / 4, std::false_type{}, 0);
      cp_async_fence();
    }

    softmax.update(scores, acc_o_rc, softmax_scale_log2);
    Tensor p = make_tensor<Element>(acc_s.layout());
    convert_fragment(acc_s, p);
    Tensor p_a = make_tensor(p.data(), acc_as_operand_a_layout(p.layout()));
    gemm_reg_smem(mma, acc_o, p_a, tOrVt, tOsVt, smem_copy_v, smem_copy_v_thr);
  };

  // The two-stage step: K and V of this visit sit in `stage`; those of the next visit
  // (visit_next, or -1) are loaded into the other stage during the whole step. next(n) gives
  // the visit after visit_next, as in step().
  auto step2 = [&](int n_block, int stage, auto kind, int visit_next, auto next) {
    constexpr int kKind = decltype(kind)::value;
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cp_async_wait<0>();  // this visit's K and V (and Q on the first step) have landed
    __syncthreads();     // ... for all threads; every warp is done with the other stage
    if (visit_next >= 0) {
      load_k(visit_next / 4, std::false_type{}, stage ^ 1);
      load_v(visit_next / 4, std::false_type{}, stage ^ 1);
    }
    cp_async_fence();

    gemm_smem_smem(mma, acc_s, tSrQ, tSrK, tSsQ, at_stage(tSsK, stage), smem_copy_q, smem_copy_k,
                   smem_copy_q_thr, smem_copy_k_thr);
    const int visit = next(visit_next);
    Tensor scores = rowcol_view(acc_s);
    if constexpr (kKind == kEdge) mask_scores(scores, tScS, row0, n_block * kBlockN, window, key_end);
    if constexpr (kKind == kElement) {
      extras_tile(scores, tScS, row0, n_block * kBlockN, window, ex, scale, true);
    }

    softmax.update(scores, acc_o_rc, softmax_scale_log2);
    Tensor p = make_tensor<Element>(acc_s.layout());
    convert_fragment(acc_s, p);
    Tensor p_a = make_tensor(p.data(), acc_as_operand_a_layout(p.layout()));
    gemm_reg_smem(mma, acc_o, p_a, tOrVt, at_stage(tOsVt, stage), smem_copy_v, smem_copy_v_thr);
    return visit;
  };

  using FastStep = std::integral_constant<int, kFast>;
  using EdgeStep = std::integral_constant<int, kEdge>;
  if constexpr (Traits::kStages == 2) {
    // Walk: `visit` runs now, `visit_next` loads meanwhile; step2 returns the one after.
    auto next = [&](int v) {
      if constexpr (kExtras) {
        return v >= 0 ? next_visit(v / 4) : -1;
      } else {
        return v >= 0 && v / 4 > n_block_first ? (v / 4 - 1) * 4 : -1;
      }
    };
    int visit = kExtras ? first_visit : n_block_last * 4;
    int visit_next = next(visit);
    for (int stage = 0; visit >= 0; stage ^= 1) {
      const int n_block = visit / 4;
      const int kind = kExtras ? visit % 4
                               : (n_block > n_unmasked_hi || n_block < n_unmasked_lo ? kEdge : kFast);
      int visit_after = -1;
      if (kExtras && kind == kElement) {
        visit_after = step2(n_block, stage, std::integral_constant<int, kElement>{}, visit_next, next);
      } else if (kEdgeSteps && kind == kEdge) {
        if constexpr (kEdgeSteps) visit_after = step2(n_block, stage, EdgeStep{}, visit_next, next);
      } else {
        visit_after = step2(n_block, stage, FastStep{}, visit_next, next);
      }
      visit = visit_next;
      visit_next = visit_after;
    }
    __syncthreads();  // every warp is done reading sQ before the epilogue writes O there
  } else if constexpr (kExtras) {
    for (int visit = first_visit; visit >= 0;) {
      const int n_block = visit / 4;
      const int kind = visit % 4;
      auto next = [&](int n) {
        visit = next_visit(n);
        return visit;
      };
      if (kind == kElement) {
        step(n_block, std::integral_constant<int, kElement>{}, next);
      } else if (kEdgeSteps && kind == kEdge) {
        if constexpr (kEdgeSteps) step(n_block, EdgeStep{}, next);
      } else {
        step(n_block, FastStep{}, next);
      }
    }
  } else {
    // Tiles [n_unmasked_lo, n_unmasked_hi] lie wholly inside `unmasked` (possibly none).
    auto next = [&](int n) { return n > n_block_first ? (n - 1) * 4 : -1; };
    for (int n_block = n_block_last; n_block >= n_block_first; --n_block) {
      if (n_block > n_unmasked_hi || n_block < n_unmasked_lo) {
        step(n_block, EdgeStep{}, next);
      } else {
        step(n_block, FastStep{}, next);
      }
    }
  }

  if constexpr (kExtras) {
    // Rows >= valid_rows see nothing: sum 0 gives O = 0 and lse = -inf in finalize.
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      if (get<0>(tScS(i, 0)) >= rows_valid) softmax.row_sum[i] = 0.f;
    }
  }

  // ---- epilogue: normalize, stage O through shared memory (Q's space: the last read of sQ
  // came before the loop's second barrier), then 16-byte predicated stores ----
  float lse[kRows];
  softmax.finalize(acc_o_rc, softmax_scale, lse);
  Tensor r_o = make_tensor<Element>(acc_o.layout());
  convert_fragment(acc_o, r_o);
  Tensor sO = make_tensor(sQ.data(), typename Traits::SmemLayoutQ{});
  auto smem_copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, mma);
  auto smem_copy_o_thr = smem_copy_o.get_thread_slice(tid);
  copy(smem_copy_o, smem_copy_o_thr.retile_S(r_o), smem_copy_o_thr.partition_D(sO));

  if (get<1>(tScS(0, 0)) == 0) {  // the quad lane holding column 0 writes its rows' lse
    float* lse_rows = lse_out();
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int r = get<0>(tScS(i, 0));
      if (r < rows) lse_rows[r] = lse[i];
    }
  }
  __syncthreads();
  Tensor tOsO = gmem_store_thr.partition_S(sO);
  Tensor r_out = make_fragment_like(tOsO);
  copy(gmem_store, tOsO, r_out);
  store_tile_predicated(gmem_store, r_out, gmem_store_thr.partition_D(o_tile()), o_coord(), rows,
                        params.h);
}

}  // namespace jax_flash::sm80
