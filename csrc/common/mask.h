// Visibility of keys from queries, shared by forward and backward kernels:
//  * Window: the sliding-window rule of params.h as index arithmetic (block bounds and
//    per-element masks);
//  * Extras: lengths, segment ids, bias, dense mask and softcap (params.h ExtraParams) for
//    one (batch row, query head): tile skipping and the per-element path.
//
// Key j is visible from query i iff  i - left <= j <= i + right  and  0 <= j < S.
// left/right are kUnbounded (1 << 30) or >= 0; causal is right == 0.
// Every function here is overflow-free for any T, S < 2^31 and any window values:
// sums like i + right are never formed when they could pass S.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"

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

// Host side, for every launcher: does the call carry any extra (then the kernels run their
// extras instantiation), and do the extras satisfy what the kernels trust without checking:
// segment ids on both sides with their chunk ranges of ceil(T / 16) and ceil(S / 16) chunks,
// 16-byte aligned (sm90 reads a chunk's 4 ints at once), per_element wherever bias, mask or
// softcap is present (else tiles would skip them), and a finite softcap >= 0. The FFI handler
// guarantees all of it; direct callers (tests/cuda) may not.
inline bool has_extras(const ExtraParams& e) {
  return e.q_seqlen || e.kv_seqlen || e.q_segment_ids || e.bias || e.mask || e.softcap != 0.f ||
         e.per_element;
}

inline bool extras_consistent(const AttnParams& p) {
  const ExtraParams& e = p.extra;
  const bool segments = e.q_segment_ids != nullptr;
  if (segments != (e.kv_segment_ids != nullptr) || segments != (e.q_segment_range != nullptr) ||
      segments != (e.kv_segment_range != nullptr)) {
    return false;
  }
  if (segments && (e.q_chunks != segment_chunks(p.t) || e.kv_chunks != segment_chunks(p.s) ||
                   reinterpret_cast<uintptr_t>(e.q_segment_range) % 16 != 0 ||
                   reinterpret_cast<uintptr_t>(e.kv_segment_range) % 16 != 0)) {
    return false;
  }
  if ((e.bias || e.mask || e.softcap != 0.f) && !e.per_element) return false;
  return e.softcap >= 0.f && std::isfinite(e.softcap);
}

#if defined(__CUDACC__)
// The extras of one (batch row b, query head) as a kernel consumes them. Three layers:
//   1. lengths shrink the problem: rows >= valid_rows and keys >= valid_keys see nothing, so
//      kernels pass valid_keys where they passed S to Window, and treat a tile holding rows
//      >= valid_rows as an edge tile (those rows end with O = 0, lse = -inf);
//   2. segments narrow the walk to the other side's chunks that may match (row_partners,
//      key_partners), skip whole tiles (spans_meet) and drop the element test on tiles that
//      hold one shared id (spans_all_match), from the per-chunk (min, max) ids;
//   3. per_element (bias, mask, softcap): every tile runs the element path.
// A tile needs the element path iff  per_element() || it crosses a window edge, valid_keys
// or valid_rows || (has_segments() && !spans_all_match(...)). On that path a pair is seen
// iff its row < valid_rows, its key is inside the row's window clipped to valid_keys, the
// segment ids match and the mask is true; a seen pair's logit is softcap * tanh(scale * s /
// softcap) (or scale * s), plus bias (common/softmax.cuh extras_tile, the backward's
// element_exp).
struct Extras {
  const ExtraParams* e;
  int b, head;
  int t, s;        // T and S (row lengths of the segment id arrays)
  int valid_rows;  // min(T, max(q_seqlen[b], 0)), or T
  int valid_keys;  // min(S, max(kv_seqlen[b], 0)), or S
  float inv_softcap;  // 1 / softcap (0 without): one division per tile, not one per score

  __device__ __forceinline__ Extras(const AttnParams& p, int b_, int head_)
      : e(&p.extra), b(b_), head(head_), t(p.t), s(p.s), valid_rows(p.t), valid_keys(p.s),
        inv_softcap(p.extra.softcap != 0.f ? 1.f / p.extra.softcap : 0.f) {
    if (e->q_seqlen) valid_rows = Window::min_(p.t, Window::max_(e->q_seqlen[b], 0));
    if (e->kv_seqlen) valid_keys = Window::min_(p.s, Window::max_(e->kv_seqlen[b], 0));
  }

  __device__ __forceinline__ bool has_segments() const { return e->q_segment_ids != nullptr; }
  __device__ __forceinline__ bool per_element() const { return e->per_element; }
  // With bias or softcap the element path turns scores into natural-unit logits, so such a
  // call runs its whole softmax with scale 1 (log2(e) in exp2 units).
  __device__ __forceinline__ bool transforms() const {
    return e->bias != nullptr || e->softcap != 0.f;
  }

  // (min, max) segment id over rows [lo, hi) / keys [lo, hi) (non-empty), from the chunks.
  __device__ __forceinline__ int2 row_span(int lo, int hi) const {
    return merged(e->q_segment_range, e->q_chunks, lo, hi, 0);
  }
  __device__ __forceinline__ int2 key_span(int lo, int hi) const {
    return merged(e->kv_segment_range, e->kv_chunks, lo, hi, 0);
  }
  // The keys that may share an id with rows [lo, hi) (non-empty): no key outside does.
  // Not clipped to S or valid_keys.
  __device__ __forceinline__ Range row_partners(int lo, int hi) const {
    const int2 c = merged(e->q_segment_range, e->q_chunks, lo, hi, 1);
    return Range{c.x * kSegmentChunk, c.y * kSegmentChunk};
  }
  // The rows that may share an id with keys [lo, hi) (non-empty); not clipped to T.
  __device__ __forceinline__ Range key_partners(int lo, int hi) const {
    const int2 c = merged(e->kv_segment_range, e->kv_chunks, lo, hi, 1);
    return Range{c.x * kSegmentChunk, c.y * kSegmentChunk};
  }
  // False only when no row of `rows` can share an id with a key of `keys`: skip the tile.
  __device__ __forceinline__ static bool spans_meet(int2 rows, int2 keys) {
    return rows.y >= keys.x && keys.y >= rows.x;
  }
  // Every pair matches: one id on both sides.
  __device__ __forceinline__ static bool spans_all_match(int2 rows, int2 keys) {
    return rows.x == rows.y && keys.x == keys.y && rows.x == keys.x;
  }

  // Offset of (b, head, i, j) in a broadcastable [B|1, N|1, T|1, S|1] array (bias, mask;
  // dbias has bias's strides).
  __device__ __forceinline__ int64_t pair_offset(const int64_t (&st)[4], int i, int j) const {
    return b * st[0] + head * st[1] + i * st[2] + j * st[3];
  }

 private:
  // One half of the chunk summaries (params.h: (min id, max id) = half 0, the other side's
  // chunk range (lo, hi) = half 1) over the chunks of [lo, hi) (non-empty), merged as
  // (min of the first ints, max of the second ints). 8-byte loads: callers need one half.
  __device__ __forceinline__ int2 merged(const int32_t* range, int count, int lo, int hi,
                                         int half) const {
    const int2* r = reinterpret_cast<const int2*>(range) + 2 * (int64_t(b) * count) + half;
    int2 out = r[2 * (lo / kSegmentChunk)];
    for (int c = lo / kSegmentChunk + 1; c <= (hi - 1) / kSegmentChunk; ++c) {
      const int2 x = r[2 * c];
      out.x = Window::min_(out.x, x.x);
      out.y = Window::max_(out.y, x.y);
    }
    return out;
  }
};
#endif  // __CUDACC__

}  // namespace jax_flash
