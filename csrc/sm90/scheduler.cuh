// Persistent tile scheduling of the sm90 forward kernel, and the key blocks of one tile.
//
// A tile is one (batch, head, q-block) of kBlockM query rows. The grid has at most one CTA per
// multiprocessor; in round r, CTA c takes tile r G + c (G = gridDim.x) of a fixed order, or
// r G + G - 1 - c in odd rounds, so the producer and consumer warpgroups walk the same sequence
// without talking to each other. The odd rounds run backwards because in heavy-first order the
// first CTAs of every round get its heaviest tiles, round after round (and in rows-fastest
// causal order CTA c gets the same q-block position every round): going back and forth evens
// out the sums. Causal bf16 hdim 128, 16k tokens, H200, same run, seqlen 512/1k/2k/4k/8k/16k:
// 255/386/499/512/544/579 TFLOP/s, straight round robin 194/316/421/461/503/529.
// The dynamic order (fwd_launch.cuh tile_order: long causal rows up to hdim 128, sliding
// windows, segment ids with a right window edge): CTA c starts with tile c and claims each
// next tile from a global counter as it starts loading the current one (fwd_kernel.cuh
// kDynamic; the producer warp announces it to the consumers through pipeline.cuh TileFeed).
// Whichever CTA finishes first takes the next tile, so tiles of unequal work need no fixed
// pattern to balance: with packed causal documents a q-block's work peaks at each document's
// end, and the fixed rounds left the busiest CTA with far more than the mean work (a model
// with 1.35 blocks of cost per tile, 16 heads, 132 CTAs, 8 documents of 2k in 16k: 1.57x the
// mean static, 1.02x dynamic; random document lengths 1.14-1.23x static, 1.01x dynamic). Long
// causal rows gain from it together with small sections (fwd_launch.cuh has the numbers).
//
// Orders (section = 0 or the number of (batch, head) pairs per section):
//   rows fastest   (section 0) consecutive tiles are consecutive q-blocks of one (batch, head):
//                  the CTAs running together share that head's K/V in L2. For windows whose work
//                  does not grow along the sequence (non-causal, sliding) and short causal rows.
//   heavy first    (section > 0) the (batch, head) pairs are cut into sections of `section`
//                  pairs; within a section, each q-block of every pair, last q-block first.
//                  When the work per q-block grows with its index (causal, right-bounded
//                  windows), the longest tiles start first and the last wave holds the shortest
//                  ones; small sections keep the running CTAs on few heads' K/V.
#pragma once

#include <climits>

#include <cute/config.hpp>

#include "common/mask.h"
#include "common/util.cuh"
#include "params.h"

namespace jax_flash::sm90 {

struct Tile {
  int m_block;
  int batch;
  int head;
};

struct TileScheduler {
  int num_m_blocks;
  int num_heads;
  int num_tiles;  // num_m_blocks * batch * heads, < 2^31 - 2^16 (checked on the host)
  int section;    // 0: rows fastest; else heavy first in sections of this many (batch, head)
  bool snake;     // odd rounds backwards (the default; false only to measure against it)

  // The linear tile index of this CTA's round r (>= num_tiles: no more tiles).
  __device__ __forceinline__ int linear(int r) const {
    const int c = blockIdx.x, g = gridDim.x;
    return r * g + ((snake && (r & 1)) ? g - 1 - c : c);
  }

  __device__ __forceinline__ Tile tile(int linear) const {
    int m_block, bh;
    if (section > 0) {
      const int num_bh = num_tiles / num_m_blocks;
      const int section_tiles = section * num_m_blocks;
      const int first_bh = linear / section_tiles * section;
      const int in_section = linear - first_bh * num_m_blocks;
      const int width = min(section, num_bh - first_bh);  // the last section may be narrower
      bh = first_bh + in_section % width;
      m_block = num_m_blocks - 1 - in_section / width;
    } else {
      m_block = linear % num_m_blocks;
      bh = linear / num_m_blocks;
    }
    return Tile{m_block, bh / num_heads, bh % num_heads};
  }
};

// Heavy-first where the visible keys per row grow with the row index.
inline bool heavy_first_order(const AttnParams& p) {
  return p.window_right != kUnbounded && p.window_left == kUnbounded;
}

// The key blocks (of kBlockN keys) a tile visits, walked from n_hi down to n_lo. Blocks in
// [unmasked_lo, unmasked_hi] are visible to every row of the tile and inside [0, S): no
// element mask. That range may be empty (unmasked_lo > unmasked_hi).
// The producer and the consumers walk the same sequence n_hi, next(n_hi), next(next(n_hi)), ...
// while n >= n_lo; here every block of the range is visited.
struct KeyBlocks {
  int n_lo, n_hi;
  int unmasked_lo, unmasked_hi;
  __device__ __forceinline__ bool empty() const { return n_lo > n_hi; }
  __device__ __forceinline__ int next(int n) const { return n - 1; }
};

template <int kBlockM, int kBlockN>
__device__ __forceinline__ KeyBlocks key_blocks(const AttnParams& p, int m_block) {
  const int row0 = m_block * kBlockM;
  const int row_end = row0 + min(kBlockM, p.t - row0);
  const Window window{p.window_left, p.window_right};
  const Range keys = window.keys_of_rows(row0, row_end, p.s);
  if (keys.empty()) return KeyBlocks{1, 0, 1, 0};
  const Range all = window.keys_of_all_rows(row0, row_end, p.s);
  return KeyBlocks{keys.lo / kBlockN, ceil_div(keys.hi, kBlockN) - 1, ceil_div(all.lo, kBlockN),
                   all.hi / kBlockN - 1};
}

// The key blocks of one tile under extras (mask.h Extras): the range comes from the rows below
// valid_rows and the keys below valid_keys; with segment ids, it is clipped to the key chunks
// that may match the tile's row chunks (params.h: for packed documents, exactly the tile's
// documents), and a block is visited only if one of its 16-key chunks has an id range that
// meets the tile's row id range (both sides call next(), so they agree on the sequence).
// Rows >= valid_rows are left to the epilogue (O = 0, lse = -inf), so they never force the
// element path.
// Warp-collective: every lane of a warp constructs it and calls next() with the same values.
// The segment tests run 32 blocks at a time (each lane loads one block's chunk ranges; ballots
// keep the answers as bit masks), so walking or skipping blocks costs one round of loads per 32
// blocks: one load round per block made the producer thread the bottleneck of packed documents.
template <int kBlockM, int kBlockN>
struct ExtraKeyBlocks : KeyBlocks {
  static constexpr int kChunks = kBlockN / kSegmentChunk;  // segment chunks per key block
  static_assert(kBlockN % kSegmentChunk == 0, "key blocks hold whole segment chunks");
  static_assert(kBlockM / kSegmentChunk <= 32, "one lane per row chunk");
  Extras ext;
  int2 row_ids;          // (min, max) segment id of the tile's valid rows
  int top;               // the segment tests cached for blocks top, top - 1, ..., top - 31:
  unsigned meets_bits;   //   bit k: block top - k may hold a matching pair (visited)
  unsigned match_bits;   //   bit k: every pair of block top - k matches (no element test)

  __device__ __forceinline__ ExtraKeyBlocks(const AttnParams& p, int m_block, int batch, int head)
      : KeyBlocks{1, 0, 1, 0}, ext(p, batch, head), row_ids{0, 0}, top(0), meets_bits(0),
        match_bits(0) {
    const int row0 = m_block * kBlockM;
    const int row_end = min(row0 + kBlockM, ext.valid_rows);
    if (row0 >= row_end) return;
    const Window window{p.window_left, p.window_right};
    Range keys = window.keys_of_rows(row0, row_end, ext.valid_keys);
    if (keys.empty()) return;
    if (ext.has_segments()) {
      // Row chunk c0 + lane, reduced over the warp: the tile's id span, and the key chunks
      // that may match it (one load round). Clipping the walk to those chunks is what makes
      // packed documents cheap: the scan below starts at the document's last block.
      const int lane = threadIdx.x % 32, c0 = row0 / kSegmentChunk;
      int4 r = int4{INT_MAX, INT_MIN, INT_MAX, INT_MIN};
      if (c0 + lane <= (row_end - 1) / kSegmentChunk) {
        r = reinterpret_cast<const int4*>(ext.e->q_segment_range)
            [int64_t(ext.b) * ext.e->q_chunks + c0 + lane];
      }
      row_ids = int2{__reduce_min_sync(0xffffffffu, r.x), __reduce_max_sync(0xffffffffu, r.y)};
      const int chunk_lo = __reduce_min_sync(0xffffffffu, r.z);
      const int chunk_hi = __reduce_max_sync(0xffffffffu, r.w);
      // Chunk indices are < 2^27, so the products do not overflow.
      keys.lo = max(keys.lo, chunk_lo * kSegmentChunk);
      keys.hi = min(keys.hi, chunk_hi * kSegmentChunk);
      if (keys.empty()) return;
    }
    const Range all = window.keys_of_all_rows(row0, row_end, ext.valid_keys);
    n_lo = keys.lo / kBlockN;
    n_hi = ceil_div(keys.hi, kBlockN) - 1;
    unmasked_lo = ceil_div(all.lo, kBlockN);
    unmasked_hi = all.hi / kBlockN - 1;
    if (ext.has_segments()) {
      top = n_hi + 33;       // an empty cache above the range: the first next() fills it
      n_hi = next(n_hi + 1);  // n_hi < n_lo when no block meets: an empty tile
    }
  }

  // Largest visited block below n (< n_lo when there is none). Called with decreasing n.
  __device__ __forceinline__ int next(int n) {
    --n;
    if (!ext.has_segments()) return n;
    while (n >= n_lo) {
      if (n < top - 31) fill(n);
      const unsigned bits = meets_bits >> (top - n);  // bit k: block n - k
      if (bits) return n - (__ffs(bits) - 1);
      n = top - 32;
    }
    return n;
  }

  // Does block n (just returned by next()) need the element path?
  __device__ __forceinline__ bool element(int n) const { return ext.per_element() || masks(n); }
  // Does it need the element path's masks (window edges, lengths, segments, dense mask)? On
  // the element path without them, bias and softcap only transform the scores.
  __device__ __forceinline__ bool masks(int n) const {
    if (n < unmasked_lo || n > unmasked_hi || ext.e->mask != nullptr) return true;
    return ext.has_segments() && !((match_bits >> (top - n)) & 1u);
  }

 private:
  // Segment tests of blocks t, t - 1, ..., t - 31 (lane k: block t - k).
  __device__ __forceinline__ void fill(int t) {
    top = t;
    const int n = t - int(threadIdx.x % 32);
    bool meets = false, all_match = row_ids.x == row_ids.y;
    if (n >= n_lo) {
      // (min, max) ids of the block's chunks: the first half of each 4-int chunk summary.
      const int2* r = reinterpret_cast<const int2*>(ext.e->kv_segment_range) +
                      2 * (int64_t(ext.b) * ext.e->kv_chunks + n * kChunks);
      const int count = ceil_div(ext.valid_keys - n * kBlockN, kSegmentChunk);
      CUTE_UNROLL
      for (int c = 0; c < kChunks; ++c) {
        if (c < count) {
          const int2 keys = r[2 * c];
          meets |= Extras::spans_meet(row_ids, keys);
          all_match &= Extras::spans_all_match(row_ids, keys);
        }
      }
    }
    meets_bits = __ballot_sync(0xffffffffu, meets);
    match_bits = __ballot_sync(0xffffffffu, meets && all_match);
  }
};

}  // namespace jax_flash::sm90
