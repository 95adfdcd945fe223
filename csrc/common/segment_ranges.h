// The segment-id chunk summaries the kernels read (params.h ExtraParams q_segment_range /
// kv_segment_range), computed on the device in one small kernel: jax_flash/_cuda.py
// segment_ranges is the same computation in jax.numpy (the specification, tested on the CPU).
//
// For each 16-chunk c of one side's ids: (min id, max id, lo, hi), where [lo, hi) are the
// other side's chunks that may hold an id in [min id, max id]:
//   lo = #{j : max_before[j] <  min id}   max_before: running max of the other side's chunk
//   hi = #{j : min_after[j]  <= max id}   maxima from the left; min_after: running min of
//                                         its chunk minima from the right (both nondecreasing)
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace jax_flash {

struct SegmentRangeParams {
  const int32_t* q_ids;   // [B, T]
  const int32_t* kv_ids;  // [B, S]
  int32_t* q_range;       // [B, ceil(T / 16), 4]
  int32_t* kv_range;      // [B, ceil(S / 16), 4]
  int32_t* scratch;       // segment_ranges_scratch_bytes(b, t, s) bytes
  int64_t b;
  int32_t t, s;
};

// Device scratch the kernel needs for its per-chunk arrays (chunk min and max ids and the
// envelopes of both sides): 0 where they fit in shared memory (T + S <= 44k).
size_t segment_ranges_scratch_bytes(int64_t b, int32_t t, int32_t s);

// One CTA per batch row; cudaErrorInvalidValue for negative sizes or missing buffers.
cudaError_t launch_segment_ranges(const SegmentRangeParams& p, cudaStream_t stream);

}  // namespace jax_flash
