// The segment-range pre-pass (segment_ranges.h) as one kernel, a CTA per batch row, in three
// phases over both sides at once (the work is tiny, so what counts is the number of dependent
// memory round trips):
//   A  each chunk's (min id, max id): independent loads, 16 bytes at a time where aligned;
//   B  the four envelopes (running max of the maxima from the left, running min of the minima
//      from the right, for q and for kv) in one block scan of int4, 1024 chunks at a time
//      with a carry; a suffix scan is a prefix scan over the chunks in reverse;
//   C  each chunk's [lo, hi) by binary search in the other side's envelopes, written with its
//      (min, max) as one 16-byte store.
// The per-chunk arrays live in shared memory when they fit (2816 chunks: T + S <= 44k), else
// in the global scratch the handler allocates.
// H200, one row of 16k tokens, 8 documents, two runs: 0.014-0.024 ms per pre-pass (50 in
// one executable) where jax.numpy's (reductions, cumulative max/min, a sort-based search)
// took 0.088-0.129; forward of 8 packed documents of 2k with the ids as arguments, TFLOP/s,
// sm90 425-455 -> 485-510, causal 333-350 -> 380-416; sm80 262-267 -> 271-282, causal
// 206-227 -> 236-253 (tests/cuda/segment_prepass_probe.py, session 10).
#include "common/segment_ranges.h"

#include <climits>

#include "params.h"

namespace jax_flash {
namespace {

constexpr int kThreads = 1024;
// Dynamic shared memory for the per-chunk arrays: 48 KB without the opt-in attribute, less
// the scan's 512 bytes.
constexpr int kSmemBytes = 44 * 1024;
constexpr int kBytesPerChunk = 4 * sizeof(int32_t);  // min, max and the two envelopes
constexpr int kWarps = kThreads / 32;

// (max, min, max, min): the q envelopes in x, y and the kv envelopes in z, w.
struct EnvelopeOp {
  __device__ int4 operator()(const int4& a, const int4& b) const {
    return make_int4(max(a.x, b.x), min(a.y, b.y), max(a.z, b.z), min(a.w, b.w));
  }
};

__device__ int4 shfl_up(const int4& v, int delta) {
  constexpr unsigned kAll = 0xffffffffu;
  return make_int4(__shfl_up_sync(kAll, v.x, delta), __shfl_up_sync(kAll, v.y, delta),
                   __shfl_up_sync(kAll, v.z, delta), __shfl_up_sync(kAll, v.w, delta));
}

// Inclusive scan of v over the block's threads in order; *total gets the whole block's.
// warp_totals: kWarps entries of shared memory. Ends with every thread past its reads of it.
__device__ int4 block_scan(int4 v, int4* warp_totals, int4* total) {
  const EnvelopeOp op;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int4 up = shfl_up(v, d);
    if (lane >= d) v = op(up, v);
  }
  if (lane == 31) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int4 w = warp_totals[lane];  // kWarps == 32
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int4 up = shfl_up(w, d);
      if (lane >= d) w = op(up, w);
    }
    warp_totals[lane] = w;
  }
  __syncthreads();
  if (warp > 0) v = op(warp_totals[warp - 1], v);
  *total = warp_totals[kWarps - 1];
  __syncthreads();
  return v;
}

// One side's per-chunk arrays, each [chunks].
struct Side {
  const int32_t* ids;  // this row's ids [len]
  int len, chunks;
  int32_t *lo_id, *hi_id, *env_max, *env_min;
  int32_t* range;  // this row's output [chunks, 4]

  __device__ Side(const int32_t* ids_, int len_, int32_t* arrays, int32_t* range_)
      : ids(ids_), len(len_), chunks(int(segment_chunks(len_))),
        lo_id(arrays), hi_id(arrays + chunks), env_max(arrays + 2 * chunks),
        env_min(arrays + 3 * chunks), range(range_) {}

  __device__ void chunk_min_max(int c) const {
    int mn = INT_MAX, mx = INT_MIN;
    const int32_t* chunk = ids + c * kSegmentChunk;
    if ((c + 1) * kSegmentChunk <= len && reinterpret_cast<uintptr_t>(chunk) % 16 == 0) {
      // A whole, aligned chunk: four 16-byte loads (the threads of a warp read 64-byte
      // strided chunks, so four instructions rather than sixteen).
#pragma unroll
      for (int j = 0; j < kSegmentChunk / 4; ++j) {
        const int4 v = reinterpret_cast<const int4*>(chunk)[j];
        mn = min(mn, min(min(v.x, v.y), min(v.z, v.w)));
        mx = max(mx, max(max(v.x, v.y), max(v.z, v.w)));
      }
    } else {
#pragma unroll
      for (int j = 0; j < kSegmentChunk; ++j) {
        if (c * kSegmentChunk + j < len) {
          mn = min(mn, chunk[j]);
          mx = max(mx, chunk[j]);
        }
      }
    }
    lo_id[c] = mn;
    hi_id[c] = mx;
  }
};

// #{j < n : env[j] < x} (kStrict) or #{j < n : env[j] <= x}, env nondecreasing.
template <bool kStrict>
__device__ int count_below(const int32_t* env, int n, int x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const int v = env[mid];
    if (kStrict ? v < x : v <= x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__device__ void search(const Side& x, const Side& other) {
  for (int c = threadIdx.x; c < x.chunks; c += kThreads) {
    const int mn = x.lo_id[c], mx = x.hi_id[c];
    *reinterpret_cast<int4*>(x.range + 4 * int64_t(c)) =
        make_int4(mn, mx, count_below<true>(other.env_max, other.chunks, mn),
                  count_below<false>(other.env_min, other.chunks, mx));
  }
}

__global__ void __launch_bounds__(kThreads) segment_ranges_kernel(const SegmentRangeParams p,
                                                                  bool in_smem) {
  static_assert(kWarps == 32, "block_scan: one warp scans the warp totals");
  extern __shared__ int4 smem[];
  __shared__ int4 warp_totals[kWarps];
  const int64_t b = blockIdx.x;
  const int qc = int(segment_chunks(p.t)), kc = int(segment_chunks(p.s));
  int32_t* arrays = in_smem ? reinterpret_cast<int32_t*>(smem)
                            : p.scratch + b * 4 * (int64_t(qc) + kc);
  const Side q(p.q_ids + b * p.t, p.t, arrays, p.q_range + b * qc * 4);
  const Side kv(p.kv_ids + b * p.s, p.s, arrays + 4 * qc, p.kv_range + b * kc * 4);
  const int most = max(qc, kc);

  for (int c = threadIdx.x; c < most; c += kThreads) {  // A
    if (c < qc) q.chunk_min_max(c);
    if (c < kc) kv.chunk_min_max(c);
  }
  __syncthreads();

  int4 carry = make_int4(INT_MIN, INT_MAX, INT_MIN, INT_MAX);  // B
  for (int base = 0; base < most; base += kThreads) {
    const int i = base + threadIdx.x;
    const int4 v =
        make_int4(i < qc ? q.hi_id[i] : INT_MIN, i < qc ? q.lo_id[qc - 1 - i] : INT_MAX,
                  i < kc ? kv.hi_id[i] : INT_MIN, i < kc ? kv.lo_id[kc - 1 - i] : INT_MAX);
    int4 total;
    const int4 scanned = EnvelopeOp{}(carry, block_scan(v, warp_totals, &total));
    carry = EnvelopeOp{}(carry, total);
    if (i < qc) {
      q.env_max[i] = scanned.x;
      q.env_min[qc - 1 - i] = scanned.y;
    }
    if (i < kc) {
      kv.env_max[i] = scanned.z;
      kv.env_min[kc - 1 - i] = scanned.w;
    }
  }
  __syncthreads();  // C reads every envelope

  search(q, kv);  // C
  search(kv, q);
}

// Bytes of one row's per-chunk arrays (both sides).
int64_t row_bytes(int32_t t, int32_t s) {
  return (segment_chunks(t) + segment_chunks(s)) * kBytesPerChunk;
}

}  // namespace

size_t segment_ranges_scratch_bytes(int64_t b, int32_t t, int32_t s) {
  return row_bytes(t, s) > kSmemBytes ? size_t(b * row_bytes(t, s)) : 0;
}

cudaError_t launch_segment_ranges(const SegmentRangeParams& p, cudaStream_t stream) {
  if (p.b < 0 || p.b > INT32_MAX || p.t < 0 || p.s < 0) return cudaErrorInvalidValue;
  if (p.b == 0) return cudaSuccess;
  const bool in_smem = row_bytes(p.t, p.s) <= kSmemBytes;
  const bool q_ok = p.t == 0 || (p.q_ids && p.q_range);
  const bool kv_ok = p.s == 0 || (p.kv_ids && p.kv_range);
  if (!q_ok || !kv_ok || (!in_smem && !p.scratch)) return cudaErrorInvalidValue;
  const size_t smem = in_smem ? size_t(row_bytes(p.t, p.s)) : 0;
  segment_ranges_kernel<<<unsigned(p.b), kThreads, smem, stream>>>(p, in_smem);
  return cudaGetLastError();
}

}  // namespace jax_flash
