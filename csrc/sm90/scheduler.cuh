// Persistent tile scheduling of the sm90 forward kernel, and the key blocks of one tile.
//
// A tile is one (batch, head, q-block) of kBlockM query rows. The grid has at most one CTA per
// multiprocessor; CTA c takes tiles c, c + gridDim.x, c + 2 gridDim.x, ... of a fixed order, so
// the producer and consumer warpgroups walk the same sequence without talking to each other.
//
// Orders:
//   rows fastest   consecutive tiles are consecutive q-blocks of one (batch, head): the CTAs
//                  running together share that head's K/V in L2. For windows whose work does
//                  not grow along the sequence (non-causal, sliding).
//   heavy first    each q-block of every (batch, head), last q-block first: when the work per
//                  q-block grows with its index (causal, right-bounded windows), the longest
//                  tiles start in the first wave and the last wave holds the shortest ones.
#pragma once

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
  bool heavy_first;

  __device__ __forceinline__ Tile tile(int linear) const {
    int m_block, bh;
    if (heavy_first) {
      const int num_bh = num_tiles / num_m_blocks;
      bh = linear % num_bh;
      m_block = num_m_blocks - 1 - linear / num_bh;
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
struct KeyBlocks {
  int n_lo, n_hi;
  int unmasked_lo, unmasked_hi;
  __device__ __forceinline__ bool empty() const { return n_lo > n_hi; }
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

}  // namespace jax_flash::sm90
