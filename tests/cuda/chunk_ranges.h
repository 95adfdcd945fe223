// Host-side segment summaries for the standalone drivers (tests/cuda/*_check.cu): what
// jax_flash/_cuda.py segment_ranges computes for the kernels, written again for C++.
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "params.h"

// Per-chunk (min id, max id, lo, hi) of [rows, len] segment ids against the other side's
// [rows, other_len] ids, as jax_flash/_cuda.py segment_ranges: [lo, hi) are the other side's
// chunks that may hold an id in [min, max], found in the running max of its chunk maxima (from
// the left) and the running min of its chunk minima (from the right), both nondecreasing.
inline std::vector<int32_t> chunk_ranges(const std::vector<int32_t>& ids, int rows, int len,
                                         const std::vector<int32_t>& other, int other_len) {
  constexpr int kC = jax_flash::kSegmentChunk;
  auto min_max = [](const std::vector<int32_t>& x, int b, int n, int c) {
    std::pair<int32_t, int32_t> m{INT32_MAX, INT32_MIN};
    for (int i = c * kC; i < std::min(n, (c + 1) * kC); ++i) {
      m.first = std::min(m.first, x[size_t(b) * n + i]);
      m.second = std::max(m.second, x[size_t(b) * n + i]);
    }
    return m;
  };
  const int chunks = (len + kC - 1) / kC, other_chunks = (other_len + kC - 1) / kC;
  std::vector<int32_t> r(size_t(rows) * chunks * 4), max_before(other_chunks), min_after(other_chunks);
  for (int b = 0; b < rows; ++b) {
    for (int c = 0; c < other_chunks; ++c) {
      const int32_t m = min_max(other, b, other_len, c).second;
      max_before[c] = c > 0 ? std::max(max_before[c - 1], m) : m;
    }
    for (int c = other_chunks - 1; c >= 0; --c) {
      const int32_t m = min_max(other, b, other_len, c).first;
      min_after[c] = c + 1 < other_chunks ? std::min(min_after[c + 1], m) : m;
    }
    for (int c = 0; c < chunks; ++c) {
      const auto [lo_id, hi_id] = min_max(ids, b, len, c);
      int32_t* out = &r[(size_t(b) * chunks + c) * 4];
      out[0] = lo_id;
      out[1] = hi_id;
      out[2] = int32_t(std::lower_bound(max_before.begin(), max_before.end(), lo_id) - max_before.begin());
      out[3] = int32_t(std::upper_bound(min_after.begin(), min_after.end(), hi_id) - min_after.begin());
    }
  }
  return r;
}
