// Mainloop of the sm90 forward kernel: the producer's TMA loads and the consumers' products and
// softmax for one tile (one batch, head and q-block of kBlockM rows).
//
// Dimension legend: kBlockM query rows per tile (64 per consumer warpgroup), kBlockN keys per
// block, kHeadDim the padded head dim; T, S, H as in params.h.
//
// Visited key blocks: n_hi, next(n_hi), ... while >= n_lo (scheduler.cuh; every block of the
// range without extras, where next(n) = n - 1; "prev" below is the block visited before n).
//
// Producer (one thread; its warp with extras): K[n_hi], Q (into the tile's Q buffer: two
// alternate where shared memory allows), then K[n], V[prev] for each later visited n, then the
// last V, each into the next free stage of its ring (K and V have separate rings and barriers).
// Tiles and rows past T, S or H read as zeros (TMA out-of-bounds fill).
//
// Consumer warpgroup (64 rows), key blocks walked from n_hi down, one step per visited block n:
//
//   S = Q K[n]^T         | issued together, in the warpgroup's ping-pong turn
//   O += P V[prev]       |   (P: the previous block's probabilities, in registers)
//   wait S; release K[n]; mask; softmax(S) -> P', rescale factors    (overlaps the P V product)
//   wait O; release V[prev]; rescale O if the offsets moved; P = P'
//
// with a prologue (S for n_hi alone) and a tail (the last P V), then the epilogue
// (fwd_epilogue.cuh). With ping-pong the warpgroups' products take turns on the tensor cores
// (round robin) while the others run their softmax.
#pragma once

#include <cfloat>
#include <type_traits>

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/util.cuh"
#include "params.h"
#include "sm90/fwd_epilogue.cuh"
#include "sm90/fwd_traits.h"
#include "sm90/pipeline.cuh"
#include "sm90/scheduler.cuh"
#include "sm90/softmax.cuh"

namespace jax_flash::sm90 {

template <class Traits>
struct FwdMainloop {
  using Element = typename Traits::Element;
  using Storage = typename Traits::SharedStorage;
  using Params = KernelParams<Traits>;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kStages = Traits::kStages;
  static constexpr int kRows = 2;  // query rows per thread in a 64-row wgmma accumulator
  using Pipe = PipeState<kStages>;

  // ---- producer: Q of one tile into its buffer (leader: the thread that issues) ----
  static __device__ __forceinline__ void load_q(const Params& kp, Storage& st, const Tile& tile,
                                                int q_iter, bool leader) {
    using namespace cute;
    const FwdParams& p = kp.fwd;
    Tensor mQ = kp.tma_q.get_tma_tensor(make_shape(p.t, p.h, p.n, p.b));
    Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch),
                           Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(tile.m_block, 0));
    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Traits::SmemLayoutQ{});
    // (TMA) views: one TMA "tile" may be several boxes (one per 64-column chunk).
    auto q_part = tma_partition(kp.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                group_modes<0, 2>(gQ));
    // The consumers of the tile that last used this Q buffer are done with it once their last
    // S product completed.
    const int q_stage = q_iter % Traits::kQStages;
    Barrier::wait(&st.q_empty[q_stage], ((q_iter / Traits::kQStages) & 1) ^ 1);
    if (leader) {
      TxBarrier::arrive_and_expect_tx(&st.q_full[q_stage], Traits::kQBytes);
      copy(kp.tma_q.with(st.q_full[q_stage]), get<0>(q_part), get<1>(q_part)(_, q_stage));
    }
  }

  // The key blocks of a tile, as both sides walk them: ExtraKeyBlocks with extras (its
  // construction and next() are warp-collective), else every block of the window's range.
  template <bool kExtras>
  static __device__ __forceinline__ auto tile_blocks(const FwdParams& p, const Tile& tile) {
    if constexpr (kExtras) {
      return ExtraKeyBlocks<kBlockM, kBlockN>(p, tile.m_block, tile.batch, tile.head);
    } else {
      return key_blocks<kBlockM, kBlockN>(p, tile.m_block);
    }
  }

  // ---- producer: issue one tile's loads ----
  // Called by a single thread (leader), or by a whole warp where lane 0 is the leader (with
  // ExtraKeyBlocks, whose next() is warp-collective, and in the dynamic tile order); the loads
  // follow blocks.next().
  template <class Blocks>
  static __device__ __forceinline__ void load(const Params& kp, Storage& st, const Tile& tile,
                                              Blocks& blocks, Pipe& k_write, Pipe& v_write,
                                              int q_iter, bool leader) {
    using namespace cute;
    const FwdParams& p = kp.fwd;
    const int kv_head = tile.head / p.group;

    Tensor mK = kp.tma_k.get_tma_tensor(make_shape(p.s, p.h, p.n_kv, p.b));
    Tensor gK = local_tile(mK(_, _, kv_head, tile.batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_coord(_, 0));  // (kBlockN, kHeadDim, blocks)
    Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Traits::SmemLayoutK{});
    auto k_part = tma_partition(kp.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                group_modes<0, 2>(gK));
    Tensor tKgK = get<0>(k_part);  // (TMA, blocks)
    Tensor tKsK = get<1>(k_part);  // (TMA, stages)

    Tensor mVt = kp.tma_vt.get_tma_tensor(make_shape(p.h, p.s, p.n_kv, p.b));
    Tensor gVt = local_tile(mVt(_, _, kv_head, tile.batch), Shape<Int<kHeadDim>, Int<kBlockN>>{},
                            make_coord(0, _));  // (kHeadDim, kBlockN, blocks)
    Tensor sVt = make_tensor(make_smem_ptr(st.v.data()), typename Traits::SmemLayoutVt{});
    auto v_part = tma_partition(kp.tma_vt, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sVt),
                                group_modes<0, 2>(gVt));
    Tensor tVgV = get<0>(v_part);  // (TMA, blocks)
    Tensor tVsV = get<1>(v_part);  // (TMA, stages)

    auto load_k = [&](int n) {
      Barrier::wait(&st.k_empty[k_write.index], k_write.phase ^ 1u);
      if (leader) {
        TxBarrier::arrive_and_expect_tx(&st.k_full[k_write.index], Traits::kKVBytes);
        copy(kp.tma_k.with(st.k_full[k_write.index]), tKgK(_, n), tKsK(_, k_write.index));
      }
      k_write.advance();
    };
    auto load_v = [&](int n) {
      Barrier::wait(&st.v_empty[v_write.index], v_write.phase ^ 1u);
      if (leader) {
        TxBarrier::arrive_and_expect_tx(&st.v_full[v_write.index], Traits::kKVBytes);
        copy(kp.tma_vt.with(st.v_full[v_write.index]), tVgV(_, n), tVsV(_, v_write.index));
      }
      v_write.advance();
    };

    load_k(blocks.n_hi);
    load_q(kp, st, tile, q_iter, leader);
    int prev = blocks.n_hi;
    for (int n = blocks.next(prev); n >= blocks.n_lo; n = blocks.next(n)) {
      load_k(n);
      load_v(prev);
      prev = n;
    }
    load_v(prev);
  }

  // ---- consumers: every tile of this CTA (called by all kConsumerThreads threads) ----
  // wg: this consumer warpgroup (0 .. kConsumerWarpGroups - 1); ctid: the thread's index among
  // the consumers. Every warpgroup walks the same tiles and the same key blocks (computed for
  // the whole kBlockM-row tile), which the ping-pong turns and the per-warp empty-barrier
  // arrivals (kConsumerWarps per phase) rely on.
  // next_tile() gives the linear index of the CTA's next tile (>= sched.num_tiles: no more).
  template <bool kExtras, class NextTile>
  static __device__ __forceinline__ void consume(const Params& kp, Storage& st,
                                                 const TileScheduler& sched, int wg, int ctid,
                                                 NextTile&& next_tile) {
    using namespace cute;
    using Blocks = std::conditional_t<kExtras, ExtraKeyBlocks<kBlockM, kBlockN>, KeyBlocks>;
    using Softmax = OnlineSoftmax<kRows>;
    const FwdParams& p = kp.fwd;
    constexpr bool kQRegs = Traits::kQInRegs && !kExtras;
    std::conditional_t<kQRegs, typename Traits::TiledMmaQKRegs, typename Traits::TiledMmaQK> mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(ctid);
    auto thr_pv = mma_pv.get_thread_slice(ctid);
    const PingPong<Traits::kPingPong, Traits::kConsumerWarpGroups, Traits::kPingPongBarrier>
        pingpong{wg};
    pingpong.start();

    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(st.v.data()), typename Traits::SmemLayoutVt{});
    Tensor tSrK = thr_qk.partition_fragment_B(sK);    // descriptors (MMA, MMA_N, MMA_K, stages)
    Tensor tOrV = thr_pv.partition_fragment_B(sVt);   // (MMA, MMA_H, MMA_N, stages)

    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor s_rc = acc_rowcol(acc_s);
    Tensor p16 = make_tensor<Element>(acc_s.layout());
    Tensor p_a = make_tensor(p16.data(), acc_as_a_operand_layout(p16.layout()));
    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    Tensor o_rc = acc_rowcol(acc_o);
    // Tile-local (row, col) of every score and output register.
    Tensor s_coord = acc_rowcol(
        thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    Tensor o_coord = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    static_assert(decltype(size<0>(s_rc))::value == kRows, "rows per thread");

    const Window window{p.window_left, p.window_right};
    // |scale| with a floor that keeps 0 * inf out of masked scores; a negative scale negates S.
    const float abs_scale = fmaxf(fabsf(p.scale), FLT_MIN);
    const float abs_scale_log2 = fmaxf(fabsf(p.scale_log2), FLT_MIN);
    const bool negate = p.scale < 0.f;
    // With bias or softcap (extras) the logits are natural units: base-2 softmax with scale 1.
    auto natural = [](const Blocks& blocks) {
      if constexpr (kExtras) {
        return blocks.ext.transforms();
      } else {
        return false;
      }
    };

    // Masked scores of block n -> probabilities in s_rc; true when O must be rescaled by
    // `factor`. masked: std::true_type for the element mask (mask_tile, or extras_tile in the
    // extras kernel), std::false_type for none. block_masks: the extras kernel's
    // ExtraKeyBlocks::masks() of the block, found with its element() (before next() moves on).
    bool block_masks = true;
    auto softmax_step = [&](Softmax& softmax, const Blocks& blocks, int row0, int n, auto masked,
                            float (&factor)[kRows]) __attribute__((always_inline)) {
      if (negate) {
        CUTE_UNROLL
        for (int i = 0; i < size(acc_s); ++i) acc_s(i) = -acc_s(i);
      }
      if constexpr (decltype(masked)::value) {
        if constexpr (kExtras) {
          extras_tile(s_rc, s_coord, row0, n * kBlockN, window, blocks.ext, abs_scale,
                      block_masks);
        } else {
          mask_tile(s_rc, s_coord, row0, n * kBlockN, window, p.s);
        }
      }
      return softmax.update(s_rc, natural(blocks) ? float(M_LOG2E) : abs_scale_log2, factor);
    };

    Pipe k_read, v_read;

    // The first visited block of a tile alone: S, softmax, P (O is still zero: no rescale).
    auto prologue = [&](auto& tSrQ, Softmax& softmax, const Blocks& blocks, int row0)
        __attribute__((always_inline)) {
      wait_full(st.k_full, k_read);
      wgmma_issue<true>(mma_qk, tSrQ, tSrK(_, _, _, k_read.index), acc_s);
      wgmma_wait<0>(acc_s);
      release(st.k_empty, k_read);
      float factor[kRows];
      softmax_step(softmax, blocks, row0, blocks.n_hi, std::true_type{}, factor);
      convert_fragment(acc_s, p16);
    };

    // One step: S for block n with the previous block's O += P V. after_issue runs while this
    // warpgroup's products are in flight (the extras kernel finds its next block there).
    auto step = [&](auto& tSrQ, Softmax& softmax, const Blocks& blocks, int row0, int n,
                    auto masked, auto after_issue) __attribute__((always_inline)) {
      wait_full(st.k_full, k_read);
      wait_full(st.v_full, v_read);
      pingpong.wait_turn();
      wgmma_issue<true>(mma_qk, tSrQ, tSrK(_, _, _, k_read.index), acc_s);
      wgmma_issue<false>(mma_pv, p_a, tOrV(_, _, _, v_read.index), acc_o);
      pingpong.pass_turn();
      after_issue();
      wgmma_wait<1>(acc_s);
      release(st.k_empty, k_read);
      float factor[kRows];
      const bool rescale = softmax_step(softmax, blocks, row0, n, masked, factor);
      wgmma_wait<0>(acc_o, p_a);
      release(st.v_empty, v_read);
      if (rescale) {
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) {
          CUTE_UNROLL
          for (int j = 0; j < size<1>(o_rc); ++j) o_rc(i, j) *= factor[i];
        }
      }
      convert_fragment(acc_s, p16);
    };

    // The last O += P V of a tile, alone.
    auto tail = [&]() __attribute__((always_inline)) {
      wait_full(st.v_full, v_read);
      wgmma_issue<false>(mma_pv, p_a, tOrV(_, _, _, v_read.index), acc_o);
      wgmma_wait<0>(acc_o, p_a);
      release(st.v_empty, v_read);
    };

    // Normalize O, write O and lse. Rows that saw no key get O = 0 and lse = -inf; with extras,
    // so do rows past q_seqlen (the mainloop left them unmasked).
    auto epilogue = [&](const Tile& tile, Softmax& softmax, const Blocks& blocks)
        __attribute__((always_inline)) {
      const int row0 = tile.m_block * kBlockM;
      float lse[kRows];
      softmax.finalize(o_rc, natural(blocks) ? 1.f : abs_scale, lse);
      if constexpr (kExtras) {
        Tensor c_rc = acc_rowcol(o_coord);
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) {
          if (row0 + get<0>(c_rc(i, 0)) >= blocks.ext.valid_rows) {
            lse[i] = -INFINITY;
            CUTE_UNROLL
            for (int j = 0; j < size<1>(o_rc); ++j) o_rc(i, j) = 0.f;
          }
        }
      }
      if constexpr (Traits::kStoreO) {
        store_output_staged<Traits>(kp, st, acc_o, wg, ctid % 128, tile.m_block, tile.batch,
                                    tile.head);
      } else {
        store_output_direct<Element>(p, acc_o, o_coord, row0, tile.batch, tile.head);
      }
      store_lse(p, o_coord, lse, row0, tile.batch, tile.head);
    };

    int q_iter = 0;  // non-empty tiles begun: the Q buffer and its phase
    for (int linear; (linear = next_tile()) < sched.num_tiles;) {
      const Tile tile = sched.tile(linear);
      const int row0 = tile.m_block * kBlockM;
      Blocks blocks = tile_blocks<kExtras>(p, tile);
      clear(acc_o);
      Softmax softmax;
      if (!blocks.empty()) {
        const int q_stage = q_iter % Traits::kQStages;
        auto tSrQ = thr_qk.partition_fragment_A(sQ(_, _, q_stage));  // descriptors or registers
        Barrier::wait(&st.q_full[q_stage], (q_iter / Traits::kQStages) & 1);
        // This warp is done with the Q buffer (one arrival per warp).
        auto release_q = [&]() {
          if (threadIdx.x % 32 == 0) Barrier::arrive(&st.q_empty[q_stage]);
        };
        if constexpr (kQRegs) {  // Q into registers, then its buffer goes back to the producer
          auto copy_q = make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, mma_qk);
          auto thr_copy_q = copy_q.get_thread_slice(ctid);
          copy(copy_q, thr_copy_q.partition_S(sQ(_, _, q_stage)), thr_copy_q.retile_D(tSrQ));
          __syncwarp();
          release_q();
        }
        if constexpr (kExtras) block_masks = blocks.masks(blocks.n_hi);
        prologue(tSrQ, softmax, blocks, row0);
        // Separate instantiations for masked and unmasked blocks: the element mask costs a
        // compare and select per score, and most blocks of long rows need none.
        if constexpr (kExtras) {
          // Each block decides at run time whether it takes the element path; the next
          // visited block and its decision are found while the products are in flight.
          int n = blocks.next(blocks.n_hi);
          bool element = n >= blocks.n_lo && blocks.element(n);
          bool masks = n >= blocks.n_lo && blocks.masks(n);
          while (n >= blocks.n_lo) {
            int following = n;
            bool following_element = false, following_masks = false;
            auto find_next = [&]() {
              following = blocks.next(n);
              following_element = following >= blocks.n_lo && blocks.element(following);
              following_masks = following >= blocks.n_lo && blocks.masks(following);
            };
            block_masks = masks;
            if (element) {
              step(tSrQ, softmax, blocks, row0, n, std::true_type{}, find_next);
            } else {
              step(tSrQ, softmax, blocks, row0, n, std::false_type{}, find_next);
            }
            n = following;
            element = following_element;
            masks = following_masks;
          }
        } else {
          auto nothing = []() {};
          int n = blocks.n_hi - 1;
          for (; n >= blocks.n_lo && n > blocks.unmasked_hi; --n) {
            step(tSrQ, softmax, blocks, row0, n, std::true_type{}, nothing);
          }
          for (; n >= blocks.n_lo && n >= blocks.unmasked_lo; --n) {
            step(tSrQ, softmax, blocks, row0, n, std::false_type{}, nothing);
          }
          for (; n >= blocks.n_lo; --n) {
            step(tSrQ, softmax, blocks, row0, n, std::true_type{}, nothing);
          }
        }
        // Every S product of this warp has completed: Q may be overwritten.
        if constexpr (!kQRegs) release_q();
        ++q_iter;
        tail();
      }
      epilogue(tile, softmax, blocks);
    }
    if constexpr (Traits::kStoreO) store_output_drain(ctid % 128);
  }
};

}  // namespace jax_flash::sm90
