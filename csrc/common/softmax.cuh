// Online softmax over key tiles, and the element mask of boundary tiles, on mma accumulator
// fragments in row/col view (see util.cuh): rows = a thread's query rows, cols = its key
// columns; the 4 lanes of a quad share a row.
//
// Scores arrive raw (s = q . k, unscaled). With c = scale * log2(e) > 0 (kernels pass |scale|,
// negating q when the user's scale is negative), the softmax runs in base 2:
//   p = 2^(c s - c m),  m = running row max of s,  lse = scale * m + ln(sum p)
// so each score costs one FFMA and one EX2. With bias or softcap (extras_tile) scores arrive
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

// The element path of a tile under extras (mask.h Extras, which states the rules): scores of
// hidden pairs become -inf; with ext.transforms() the others become natural-unit logits, and
// the caller runs the softmax with scale 1. `abs_scale` is
// |scale| (a negative scale has already negated the scores). masks = false (a block that
// ExtraKeyBlocks::masks() clears: inside every rule) runs the transform alone: bias and
// softcap blocks away from window edges, lengths and segment borders skip the mask passes.
// One pass per rule, each over the whole fragment, with every load unconditional (indices
// clamped into the valid rows and keys; a clamped pair is hidden by the first pass anyway), so
// the loads of a pass issue back to back instead of one branch and one round trip per score.
template <class Scores, class Coord>
__device__ __forceinline__ void extras_tile(Scores& scores, Coord const& coord, int row0, int col0,
                                            Window window, const Extras& ext, float abs_scale,
                                            bool masks) {
  using namespace cute;
  constexpr int kRows = decltype(size<0>(scores))::value;
  const ExtraParams& e = *ext.e;
  const int first_col = col0 + get<1>(coord(0, 0));
  auto col_of = [&](int j) { return first_col + get<1>(coord(0, j)) - get<1>(coord(0, 0)); };
  auto clamped_col = [&](int j) { return min(col_of(j), ext.valid_keys - 1); };
  int rows[kRows];  // this thread's rows, clamped below valid_rows (>= 1 on this path)
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) rows[i] = min(row0 + get<0>(coord(i, 0)), ext.valid_rows - 1);
  // Window, lengths: as mask_tile, with valid_keys for S and nothing for rows >= valid_rows.
  if (masks) {
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int row = row0 + get<0>(coord(i, 0));
      const Range keys = window.keys_of_row(row, ext.valid_keys);
      const bool row_ok = row < ext.valid_rows;
      const int lo = keys.lo - first_col;
      const int hi = keys.hi - first_col;
      CUTE_UNROLL
      for (int j = 0; j < size<1>(scores); ++j) {
        const int offset = get<1>(coord(i, j)) - get<1>(coord(0, 0));  // folds to a constant
        if (!row_ok || offset < lo || offset >= hi) scores(i, j) = -INFINITY;
      }
    }
  }
  if (masks && ext.has_segments()) {
    const int32_t* kv_ids = e.kv_segment_ids + int64_t(ext.b) * ext.s;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int q_id = e.q_segment_ids[int64_t(ext.b) * ext.t + rows[i]];
      CUTE_UNROLL
      for (int j = 0; j < size<1>(scores); ++j) {
        if (kv_ids[clamped_col(j)] != q_id) scores(i, j) = -INFINITY;
      }
    }
  }
  if (masks && e.mask) {
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const uint8_t* mask_row = e.mask + ext.pair_offset(e.mask_stride, rows[i], 0);
      CUTE_UNROLL
      for (int j = 0; j < size<1>(scores); ++j) {
        if (mask_row[clamped_col(j) * e.mask_stride[3]] == 0) scores(i, j) = -INFINITY;
      }
    }
  }
  // The logits as two passes with their branches hoisted. A per-score function (the former
  // Extras::logit) tested for softcap and bias and recomputed the bias offset: the bias loads
  // went one at a time and a branch every ~25 instructions missed the instruction cache (ncu:
  // no_inst and long_sb stalls led). H200, bf16 hdim 128, 16k, driver maskbench, TFLOP/s (of
  // dense): softcap 196 -> 464 (0.30 -> 0.70), bias per key 98 -> 296 (0.15 -> 0.46); the extras
  // kernel 11,232 -> 8,328 instructions, spills 150 -> 48 bytes.
  if (ext.transforms()) {
    // Softcap (or the scale alone): -inf stays -inf (softcap * tanh(-inf) is finite).
    const bool capped = e.softcap != 0.f;
    const float k = capped ? abs_scale * ext.inv_softcap : abs_scale;
    const float cap = capped ? e.softcap : 1.f;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      CUTE_UNROLL
      for (int j = 0; j < size<1>(scores); ++j) {
        const float s = scores(i, j);
        const float x = capped ? cap * tanhf(k * s) : k * s;
        scores(i, j) = s == -INFINITY ? s : x;
      }
    }
    if (e.bias) {  // then the bias: every load of a row issues before its adds
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        const float* bias_row = e.bias + ext.pair_offset(e.bias_stride, rows[i], 0);
        CUTE_UNROLL
        for (int j = 0; j < size<1>(scores); ++j) {
          scores(i, j) += bias_row[int64_t(clamped_col(j)) * e.bias_stride[3]];
        }
      }
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
