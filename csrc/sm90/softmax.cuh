// Online softmax and element masks on wgmma accumulator fragments in row/col view
// (pipeline.cuh): rows = a thread's query rows (2 per 64-row warpgroup tile), cols = its keys.
//
// Scores arrive raw (s = q . k). With c = |scale| * log2(e) the softmax runs in base 2,
//   p = 2^(c s - c m),  m = a per-row exponent offset,  lse = |scale| m + ln(sum p),
// one FFMA and one EX2 per score. (A negative scale is applied by negating s first.)
// With bias or softcap (mask.h Extras::transforms()) extras_tile() turns scores into
// natural-unit logits and the caller passes c = log2(e) and scale 1 instead.
//
// Deferred, conditional rescaling. The kernel computes the next S while the previous P @ V
// is still running, so update() only returns the factors for O; the caller applies them
// after that product completes. The offset m is raised only when some row of the warp sees
// its max grow by more than 2^kRescaleLog2 (FlashAttention-4's rule); until then p may reach
// 2^8 = 256, harmless in float32 sums and in fp16/bf16 P. Exact either way: O, the sum and
// the lse all use the same m.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/softmax.cuh"  // extras_tile
#include "common/util.cuh"

namespace jax_flash::sm90 {

// Set scores of keys a row may not see to -inf.
//   scores: row/col view of S;  coord: the same view of the TiledMma's partition of an identity
//   tensor over the tile (tile-local (row, col) per register);  row0/col0: the tile's first
//   query row and key;  seq_k: number of keys.
// Columns are compared as (compile-time offset from the thread's first column) against
// per-row bounds shifted by that first column: with absolute columns the compiler kept one
// register per score column alive across the loop and spilled at hdim 256.
template <class Scores, class Coord>
__device__ __forceinline__ void mask_tile(Scores& scores, Coord const& coord, int row0, int col0,
                                          Window window, int seq_k) {
  using namespace cute;
  const int first_col = col0 + get<1>(coord(0, 0));
  CUTE_UNROLL
  for (int i = 0; i < size<0>(scores); ++i) {
    const Range keys = window.keys_of_row(row0 + get<0>(coord(i, 0)), seq_k);
    const int lo = keys.lo - first_col;
    const int hi = keys.hi - first_col;
    CUTE_UNROLL
    for (int j = 0; j < size<1>(scores); ++j) {
      const int offset = get<1>(coord(i, j)) - get<1>(coord(0, 0));  // folds to a constant
      if (offset < lo || offset >= hi) scores(i, j) = -INFINITY;
    }
  }
}

template <int kRows>
struct OnlineSoftmax {
  static constexpr float kRescaleLog2 = 8.f;
  float row_max[kRows];  // exponent offset m, in raw score units; -inf while a row saw no key
  float row_sum[kRows];  // this thread's partial sum; the quad is combined in finalize()

  __device__ __forceinline__ OnlineSoftmax() {
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }
  }

  // Fold one key tile in: scores (row/col view, raw, masked) become p in place. Returns true
  // when this warp moved its offsets; then O row i must be multiplied by factor[i] (before the
  // next P @ V accumulates into it). Warp-uniform; call from all lanes.
  template <class Scores>
  __device__ __forceinline__ bool update(Scores& scores, float scale_log2, float (&factor)[kRows]) {
    using namespace cute;
    static_assert(decltype(size<0>(scores))::value == kRows, "row count mismatch");
    float new_max[kRows];
    bool grow = false;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      float m = row_max[i];
      CUTE_UNROLL
      for (int j = 0; j < size<1>(scores); ++j) m = fmaxf(m, scores(i, j));
      new_max[i] = quad_allreduce(m, MaxOp{});
      // -inf -> finite gives +inf > threshold; -inf -> -inf gives NaN, which compares false.
      grow |= (new_max[i] - row_max[i]) * scale_log2 > kRescaleLog2;
    }
    const bool rescale = __any_sync(0xffffffffu, grow);
    if (rescale) {
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        // A row that still saw nothing keeps -inf (its sum and output are 0: factor 1).
        factor[i] = new_max[i] == -INFINITY ? 1.f
                                            : exp2_approx((row_max[i] - new_max[i]) * scale_log2);
        row_max[i] = new_max[i];
        row_sum[i] *= factor[i];
      }
    }
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      // Offset 0 for a row with nothing visible yet: 2^(-inf - 0) = 0, not 2^(-inf + inf) = NaN.
      const float offset = row_max[i] == -INFINITY ? 0.f : row_max[i] * scale_log2;
      float sum = 0.f;
      CUTE_UNROLL
      for (int j = 0; j < size<1>(scores); ++j) {
        const float p = exp2_approx(scores(i, j) * scale_log2 - offset);
        scores(i, j) = p;
        sum += p;
      }
      row_sum[i] += sum;
    }
    return rescale;
  }

  // Normalize the output rows (row/col view) and return each row's natural-log lse.
  // Rows that saw no visible key have sum 0: output 0 and lse -inf.
  template <class Out>
  __device__ __forceinline__ void finalize(Out& out, float scale, float (&lse)[kRows]) {
    using namespace cute;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const float sum = quad_allreduce(row_sum[i], SumOp{});
      const bool empty = sum == 0.f;
      const float inv = empty ? 0.f : 1.f / sum;
      lse[i] = empty ? -INFINITY : row_max[i] * scale + logf(sum);
      CUTE_UNROLL
      for (int j = 0; j < size<1>(out); ++j) out(i, j) *= inv;
    }
  }
};

}  // namespace jax_flash::sm90
