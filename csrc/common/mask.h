// Visibility of keys from queries: the sliding-window rule of params.h, as index arithmetic
// that forward and backward kernels share (block bounds and per-element masks).
//
// Key j is visible from query i iff  i - left <= j <= i + right  and  0 <= j < S.
// left/right are kUnbounded (1 << 30) or >= 0; causal is right == 0.
// Every function here is overflow-free for any T, S < 2^31 and any window values:
// sums like i + right are never formed when they could pass S.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define JF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JF_HOST_DEVICE inline
#endif

namespace jax_flash {

// A half-open interval [lo, hi); empty when lo >= hi.
struct Range {
  int lo;
  int hi;
  JF_HOST_DEVICE bool empty() const { return lo >= hi; }
};

struct Window {
  int left;   // kUnbounded or >= 0
  int right;  // kUnbounded or >= 0

  JF_HOST_DEVICE static int min_(int a, int b) { return a < b ? a : b; }
  JF_HOST_DEVICE static int max_(int a, int b) { return a > b ? a : b; }

  // Keys visible from query row i, clipped to [0, s).
  // hi = i + 1 + min(right, s - 1 - i) equals min(s, i + right + 1) without forming i + right.
  JF_HOST_DEVICE Range keys_of_row(int i, int s) const {
    return Range{i - min_(left, i), i + 1 + min_(right, s - 1 - i)};
  }

  // Keys visible from at least one row of [row_lo, row_hi) (a non-empty row range).
  // The rows' intervals slide by one per row, so their union is one interval.
  JF_HOST_DEVICE Range keys_of_rows(int row_lo, int row_hi, int s) const {
    return Range{keys_of_row(row_lo, s).lo, keys_of_row(row_hi - 1, s).hi};
  }

  // Keys that every row of [row_lo, row_hi) sees, as far as the window goes: a key tile
  // inside this range (and inside [0, s)) needs no element mask.
  JF_HOST_DEVICE Range keys_of_all_rows(int row_lo, int row_hi, int s) const {
    return Range{keys_of_row(row_hi - 1, s).lo, keys_of_row(row_lo, s).hi};
  }

  // Query rows (clipped to [0, t)) that see at least one key of [key_lo, key_hi), a non-empty
  // key range; the mirror image of keys_of_rows, for kernels that loop over queries per key tile.
  JF_HOST_DEVICE Range rows_of_keys(int key_lo, int key_hi, int t) const {
    // Row i sees key j iff j - right <= i <= j + left.
    const int lo = key_lo - min_(right, key_lo);
    const int last = key_hi - 1;
    const int hi = last + 1 + min_(left, t - 1 - last);
    return Range{max_(lo, 0), min_(hi, t)};
  }
};

}  // namespace jax_flash
