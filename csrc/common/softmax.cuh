// Online softmax over key tiles, and the element mask of boundary tiles, on mma accumulator
// fragments in row/col view (see util.cuh): rows = a thread's query rows, cols = its key
// columns; the 4 lanes of a quad share a row.
//
// Scores arrive raw (s = q . k, unscaled). With c = scale * log2(e) > 0 (kernels pass |scale|,
// negating q when the user's scale is negative), the softmax runs in base 2:
//   p = 2^(c s - c m),  m = running row max of s,  lse = scale * m + ln(sum p)
// so each score costs one FFMA and one EX2. With bias or softcap (apply_extras) scores arrive
// as natural-unit logits and the kernels pass scale 1 (c = log2(e)).
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/util.cuh"

namespace jax_flash {

// Set scores of keys a row may not see to -inf.
//   scores: row/col view of the S accumulator;  coord: the same view of the TiledMma's
//   partition of an identity tensor over the tile (tile-local (row, col) per register);
//   row0/col0: the tile's first query row and key column;  s: number of keys.
template <class Scores, class Coord>
__device__ __forceinline__ void mask_scores(Scores& scores, Coord const& coord, int row0, int col0,
                                            Window window, int s) {
  using namespace cute;
  CUTE_UNROLL
  for (int i = 0; i < size<0>(scores); ++i) {
    const Range keys = window.keys_of_row(row0 + get<0>(coord(i, 0)), s);
    const int lo = keys.lo - col0;
    const int hi = keys.hi - col0;
    CUTE_UNROLL
    for (int j = 0; j < size<1>(scores); ++j) {
      const int col = get<1>(coord(i, j));
      if (col < lo || col >= hi) scores(i, j) = -INFINITY;
    }
  }
}

// The element path of the extras (params.h ExtraParams) on one tile: scores of pairs a row may
// not see become -inf (Extras::visible: lengths, window, segments, mask); with transform, the
// seen ones become natural-unit logits (Extras::logit: softcap of scale * s, then bias). The
// same rules as those two functions, with the per-row and per-column parts hoisted out of the
// element loop. scale > 0: a negative user scale arrives as negated q (s has the true sign of
// scale * q.k once multiplied by |scale|).
// Bias and mask are addressed from the tile's first pair with 32-bit offsets (the launcher
// checks that a tile's offsets fit): 64-bit offsets per element cost ~700 bytes of spills at
// hdim 128.
template <class Scores, class Coord>
__device__ __forceinline__ void apply_extras(Scores& scores, Coord const& coord, int row0, int col0,
                                             Window window, Extras const& ex, float scale,
                                             bool transform) {
  using namespace cute;
  const ExtraParams& e = *ex.e;
  constexpr int kCols = decltype(size<1>(scores))::value;
  const bool segments = ex.has_segments();
  const float* bias = e.bias ? e.bias + ex.pair_offset(e.bias_stride, row0, col0) : nullptr;
  const uint8_t* mask = e.mask ? e.mask + ex.pair_offset(e.mask_stride, row0, col0) : nullptr;
  const int* row_ids = segments ? e.q_segment_ids + int64_t(ex.b) * ex.t + row0 : nullptr;
  const int* col_ids = segments ? e.kv_segment_ids + int64_t(ex.b) * ex.s + col0 : nullptr;
  int key_ids[kCols];  // segment id of each column (keys past valid_keys are never seen)
  CUTE_UNROLL
  for (int j = 0; j < kCols; ++j) {
    const int c = get<1>(coord(0, j));
    key_ids[j] = segments && col0 + c < ex.valid_keys ? col_ids[c] : 0;
  }
  CUTE_UNROLL
  for (int i = 0; i < size<0>(scores); ++i) {
    const int r = get<0>(coord(i, 0));  // tile-local row
    const int row = row0 + r;
    const bool row_ok = row < ex.valid_rows;
    const Range keys = window.keys_of_row(row, ex.valid_keys);
    const int row_id = segments && row_ok ? row_ids[r] : 0;
    CUTE_UNROLL
    for (int j = 0; j < kCols; ++j) {
      const int c = get<1>(coord(i, j));  // tile-local column
      const int col = col0 + c;
      bool seen = row_ok && col >= keys.lo && col < keys.hi && row_id == key_ids[j];
      if (seen && mask) {
        seen = mask[r * int(e.mask_stride[2]) + c * int(e.mask_stride[3])] != 0;
      }
      float x = scores(i, j);
      if (seen && transform) {
        x *= scale;
        if (e.softcap != 0.f) x = e.softcap * tanhf(x / e.softcap);
        if (bias) x += bias[r * int(e.bias_stride[2]) + c * int(e.bias_stride[3])];
      }
      scores(i, j) = seen ? x : -INFINITY;
    }
  }
}

// Running max and sum for kRows rows (a thread's rows of an acc fragment).
//
// Lazy rescaling: the exponent offset m (row_max) is raised only when some row of the warp
// sees its max grow by more than kRescaleLog2 (in log2 units). Until then p = 2^(c s - c m)
// may reach 2^kRescaleLog2 = 256, harmless in float32 sums and in bf16/fp16 P; the result is
// exact either way, because O, the sum and the lse all use the same m. This skips the
// rescale of the output accumulator (kRows x head dim multiplies) on most steps.
template <int kRows>
struct OnlineSoftmax {
  static constexpr float kRescaleLog2 = 8.f;
  float row_max[kRows];  // exponent offset, in raw score units; -inf while a row saw no key
  float row_sum[kRows];  // this thread's partial sum; the quad is combined in finalize()

  __device__ __forceinline__ OnlineSoftmax() {
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }
  }

  // Fold one key tile in: scores (row/col view, raw) become p in place, and the output
  // accumulator (row/col view) is rescaled when the offsets move. Call from all lanes of a warp.
  template <class Scores, class Out>
  __device__ __forceinline__ void update(Scores& scores, Out& out, float scale_log2) {
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
    if (__any_sync(0xffffffffu, grow)) {  // warp-uniform: the whole warp rescales or none
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        // A row that still saw nothing keeps -inf (its sum and output are 0: factor 1).
        const float rescale = new_max[i] == -INFINITY
                                  ? 1.f
                                  : exp2_approx((row_max[i] - new_max[i]) * scale_log2);
        row_max[i] = new_max[i];
        row_sum[i] *= rescale;
        CUTE_UNROLL
        for (int j = 0; j < size<1>(out); ++j) out(i, j) *= rescale;
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
  }

  // Normalize the output rows and return each row's natural-log lse in lse[i].
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

}  // namespace jax_flash
