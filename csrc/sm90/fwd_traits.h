// Tile shapes, shared-memory layouts, wgmma and TMA types of the sm90 forward kernel: the one
// place for sm90 forward tile heuristics.
//
// Dimension legend: kBlockM query rows per CTA (64 per consumer warpgroup), kBlockN keys per
// pipeline stage, kHeadDim the instantiated (padded) head dim, kStages K and V buffers each,
// kConsumerWarpGroups consumer warpgroups (2, or 3 at hdim 64: 192-row tiles).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>
// wgmma shapes whose N is not a multiple of 16 (e.g. 64x80x16) live in the "extended" headers,
// which cute/tensor.hpp includes only under a macro; included here by name instead.
#include <cute/arch/mma_sm90_gmma_ext.hpp>
#include <cute/atom/mma_traits_sm90_gmma_ext.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "common/mask.h"
#include "params.h"

namespace jax_flash::sm90 {

// The S = Q K^T atom: one warpgroup computes 64 x kBlockN, both operands from shared memory.
template <typename Element, int kBlockN>
constexpr auto qk_mma_atom() {
  using namespace cute;
  constexpr bool kHalf = std::is_same_v<Element, cutlass::half_t>;
  if constexpr (kBlockN == 80) {
    if constexpr (kHalf) {
      return SM90::GMMA::MMA_64x80x16_F32F16F16_SS<GMMA::Major::K, GMMA::Major::K>{};
    } else {
      return SM90::GMMA::MMA_64x80x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::K>{};
    }
  } else if constexpr (kBlockN == 176) {
    if constexpr (kHalf) {
      return SM90::GMMA::MMA_64x176x16_F32F16F16_SS<GMMA::Major::K, GMMA::Major::K>{};
    } else {
      return SM90::GMMA::MMA_64x176x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::K>{};
    }
  } else {
    static_assert(kBlockN % 64 == 0, "kBlockN: 80, 176 or a multiple of 64");
    return GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, _16>>();
  }
}

// kQStages_: Q buffers, 0 = two where shared memory allows (see kQStages).
// kStoreO_: -1 = the default of kStoreO below, 0 off, 1 on (measurements).
// kConsumerWarpGroups_: 2 (every shipped default), or 3 at hdim 64 (see kConsumerRegs).
// kQInRegs_: S = Q K^T with Q from registers (loaded once per tile), calls without extras.
template <typename Element_, int kHeadDim_, int kBlockN_, int kStages_, bool kPingPong_,
          int kQStages_ = 0, int kStoreO_ = -1, int kConsumerWarpGroups_ = 2,
          bool kQInRegs_ = false>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  // Consumer warpgroups take turns issuing their wgmmas (named barriers), so that one's softmax
  // runs while the other's matrix products occupy the tensor cores.
  static constexpr bool kPingPong = kPingPong_;

  // 64 query rows each. FlashAttention-3 runs hdim 64 with three (192-row tiles): its wgmmas
  // are small there, so per-step and per-tile fixed costs weigh more, and a third warpgroup
  // gives the tensor cores more independent work to overlap them with.
  static constexpr int kConsumerWarpGroups = kConsumerWarpGroups_;
  static_assert(kConsumerWarpGroups == 2 || (kConsumerWarpGroups == 3 && kHeadDim_ == 64),
                "consumer warpgroups: 2, or 3 at hdim 64 (registers, see kConsumerRegs)");
  // Two Q buffers where shared memory allows: the next tile's Q loads while this tile ends,
  // instead of after its last S product (short tiles: causal at short seqlens, windows).
  // (hdim 64 and 128: 2; hdim 256: 64 KB per Q buffer does not fit twice.)
  static constexpr int kQStages =
      kQStages_ > 0 ? kQStages_
      : (2 * 64 * kConsumerWarpGroups + 2 * kStages * kBlockN) * kHeadDim * 2 <= 226 * 1024 ? 2 : 1;
  static constexpr int kBlockM = 64 * kConsumerWarpGroups;
  // O leaves through a shared-memory staging tile and one TMA store per warpgroup, where that
  // tile fits next to the pipeline (hdim 64, 128; not 256): a 4-byte global store per register
  // pair touches 8 rows' lines per instruction and held the consumers in the epilogue.
  // H200, bf16 hdim 128, same run, TFLOP/s at 512/1k/2k/4k/8k/16k, staged | direct:
  //   non-causal 448/518/587/641/659/637 | 358/474/543/620/638/648
  //   causal     322/422/521/598/554/599 | 264/372/472/568/543/602
  //   window 1024 at 16k 452 | 409 (0.68 | 0.63 of dense); hdim 64 non-causal 512/1k/2k
  //   324/388/418 | 250/297/363.
  static constexpr bool kStoreO =
      kStoreO_ >= 0 ? kStoreO_ == 1
      : ((kQStages + 1) * 64 * kConsumerWarpGroups + 2 * kStages * kBlockN) * kHeadDim * 2 <=
            226 * 1024;
  static constexpr int kConsumerThreads = 128 * kConsumerWarpGroups;
  static constexpr int kConsumerWarps = kConsumerThreads / 32;
  static constexpr int kNThreads = 128 + kConsumerThreads;  // warpgroup 0 produces (TMA)
  // Registers per thread after setmaxnreg (multiples of 8, sum over the CTA <= 65,536):
  //   2 consumers: 128 x 24 + 256 x 240 = 64,512;
  //   3 consumers: 128 x 24 + 384 x 160 = 64,512 (168 would need 67,584). At hdim 64 with
  //   128-key blocks a consumer thread holds S (64 fp32), O (32) and P (32 registers of
  //   packed 16-bit pairs) at once, plus softmax state and addresses: 160 is enough only at
  //   hdim 64 (O at hdim 128 alone would take 64 more).
  static constexpr int kProducerRegs = 24;
  // Tiles the producer may announce ahead of the consumers (the dynamic tile order's feed,
  // pipeline.cuh TileFeed); the Q buffers and K/V rings bound how far ahead it runs anyway.
  static constexpr int kTileSlots = 4;
  static constexpr int kConsumerRegs = kConsumerWarpGroups == 2 ? 240 : 160;
  static_assert(128 * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536,
                "setmaxnreg split exceeds the register file");
  // Named barriers (user ids; CUTLASS's NamedBarrier adds its 8 reserved ids, the hardware
  // has 16): ping-pong turns on ids [0, kConsumerWarpGroups), one per warpgroup (pipeline.cuh
  // PingPong), then the staged epilogue's ids [kConsumerWarpGroups, 2 kConsumerWarpGroups),
  // one per warpgroup (fwd_epilogue.cuh). With 2 consumers these are ids 0-1 and 2-3, as before.
  static constexpr uint32_t kPingPongBarrier = 0;
  static constexpr uint32_t kEpilogueBarrier = kPingPongBarrier + kConsumerWarpGroups;
  static_assert(kEpilogueBarrier + kConsumerWarpGroups <=
                    cutlass::arch::NamedBarrier::HardwareMaxNumNamedBarriers -
                    cutlass::arch::NamedBarrier::ReservedNamedBarrierCount,
                "named barrier ids beyond the hardware's 16");

  static_assert(std::is_same_v<Element, cutlass::half_t> ||
                std::is_same_v<Element, cutlass::bfloat16_t>, "fp16 or bf16 only");
  static_assert(kHeadDim % 64 == 0 && kHeadDim <= 256, "head dim: 64, 128, 192 or 256");
  static_assert(kBlockN % 16 == 0, "P @ V reads P in k16 slices");

  using TileQK = cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::Int<kHeadDim>>;
  using TilePV = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>, cute::Int<kBlockN>>;
  using WarpGroups = cute::Layout<cute::Shape<cute::Int<kConsumerWarpGroups>, cute::_1, cute::_1>>;
  // Each consumer warpgroup owns 64 query rows of both products; P (the A operand of P @ V)
  // comes from registers, V^T is read from shared memory in MN-major order.
  using TiledMmaQK = decltype(cute::make_tiled_mma(qk_mma_atom<Element, kBlockN>(), WarpGroups{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float, TilePV, cute::GMMA::Major::K,
                                 cute::GMMA::Major::MN>(),
      WarpGroups{}));
  // Q in registers: each warpgroup's 64 x kHeadDim rows of Q stay in registers for the whole
  // tile (ldmatrix once), so S = Q K^T reads only K from shared memory (32 registers at hdim
  // 128; the extras kernels, already at the register limit, keep Q in shared memory).
  static constexpr bool kQInRegs = kQInRegs_;
  static_assert(!kQInRegs || kBlockN % 64 == 0, "Q in registers: kBlockN a multiple of 64");
  using TiledMmaQKRegs = std::conditional_t<
      kQInRegs,
      decltype(cute::make_tiled_mma(
          cute::GMMA::rs_op_selector<Element, Element, float, TileQK, cute::GMMA::Major::K,
                                     cute::GMMA::Major::K>(),
          WarpGroups{})),
      TiledMmaQK>;

  // 128-byte swizzled tiles, as wgmma and TMA both want them. K and Q are K-major (head dim
  // contiguous). V is stored as V^T (head dim x keys, head dim contiguous): the same bytes as a
  // K-major V tile, with the keys of each 64-column chunk contiguous, so one TMA box per chunk.
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>, cute::Int<kQStages>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  using SmemLayoutVt = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_MN_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));
  // O staging: one 64-row tile per consumer warpgroup (its own TMA store), same swizzle as Q.
  using SmemLayoutO = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kConsumerWarpGroups>>{}));
  // One warpgroup's PV product, for the register -> shared copy of its O rows.
  using TiledMmaPVOne = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>()));

  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutVt>, 1024> v;
    cute::array_aligned<Element, kStoreO ? cute::cosize_v<SmemLayoutO> : 8, 1024> o;
    uint64_t q_full[kQStages];  // mbarriers: TMA landed (transaction count) / consumers done
    uint64_t q_empty[kQStages];
    uint64_t k_full[kStages];
    uint64_t k_empty[kStages];
    uint64_t v_full[kStages];
    uint64_t v_empty[kStages];
    // The dynamic tile order's feed (pipeline.cuh TileFeed): producer -> consumers.
    int tile_slot[kTileSlots];
    uint64_t tile_full[kTileSlots];
    uint64_t tile_empty[kTileSlots];
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm90 is 227 KB");

  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * sizeof(Element);

  // Global tensors as TMA sees them: (rows, head dim, heads, batch) for Q and K, and
  // (head dim, rows, heads, batch) for V, read as V^T. Strides in elements.
  using GmemShape = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = cute::Stride<int64_t, cute::_1, int64_t, int64_t>;
  using GmemStrideVt = cute::Stride<cute::_1, int64_t, int64_t, int64_t>;
  static auto make_tma_q(const Element* ptr, GmemShape shape, GmemStride stride) {
    return cute::make_tma_copy(cute::SM90_TMA_LOAD{},
                               cute::make_tensor(cute::make_gmem_ptr(ptr), shape, stride),
                               cute::take<0, 2>(SmemLayoutQ{}),
                               cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{},
                               cute::_1{});
  }
  static auto make_tma_k(const Element* ptr, GmemShape shape, GmemStride stride) {
    return cute::make_tma_copy(cute::SM90_TMA_LOAD{},
                               cute::make_tensor(cute::make_gmem_ptr(ptr), shape, stride),
                               cute::take<0, 2>(SmemLayoutK{}),
                               cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}, cute::_1{});
  }
  static auto make_tma_vt(const Element* ptr, GmemShape shape, GmemStrideVt stride) {
    return cute::make_tma_copy(cute::SM90_TMA_LOAD{},
                               cute::make_tensor(cute::make_gmem_ptr(ptr), shape, stride),
                               cute::take<0, 2>(SmemLayoutVt{}),
                               cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{}, cute::_1{});
  }
  static auto make_tma_o(Element* ptr, GmemShape shape, GmemStride stride) {
    return cute::make_tma_copy(cute::SM90_TMA_STORE{},
                               cute::make_tensor(cute::make_gmem_ptr(ptr), shape, stride),
                               cute::take<0, 2>(SmemLayoutO{}),
                               cute::Shape<cute::_64, cute::Int<kHeadDim>>{}, cute::_1{});
  }
  using TmaQ = decltype(make_tma_q(nullptr, GmemShape{}, GmemStride{}));
  using TmaO = decltype(make_tma_o(nullptr, GmemShape{}, GmemStride{}));
  using TmaK = decltype(make_tma_k(nullptr, GmemShape{}, GmemStride{}));
  using TmaVt = decltype(make_tma_vt(nullptr, GmemShape{}, GmemStrideVt{}));
};

// Everything the kernel reads, passed by value as a __grid_constant__ parameter (the TMA
// descriptors must live in parameter, constant or global memory).
template <class Traits>
struct KernelParams {
  typename Traits::TmaQ tma_q;
  typename Traits::TmaK tma_k;
  typename Traits::TmaVt tma_vt;
  typename Traits::TmaO tma_o;  // built only when Traits::kStoreO
  FwdParams fwd;
  int num_m_blocks;
  int section;  // tile order, see scheduler.cuh
  bool snake;
};

// Default tiles per head dim (fp16 and bf16 alike): FlashAttention-3's shapes where they compile
// without spills (ptxas -v, 240 registers per consumer thread).
//   hdim 64   128 x 128, 3 stages (2 x Q 16 KB + K/V 96 KB), ping-pong
//   hdim 128  128 x 128, 2 stages (2 x Q 32 KB + K/V 128 KB), ping-pong, Q in registers
//             for S = Q K^T (calls without extras; session 11). H100, driver, settled, mean
//             of four rounds (two with each variant first: the second one timed runs hotter),
//             TFLOP/s, Q from shared memory -> registers: non-causal 512 491 -> 475, 1k 548 ->
//             561, 2k 570 -> 562, 4k 626 -> 639, 8k 632 -> 631, 16k 635 -> 645; causal 512
//             309 -> 320, 2k 496 -> 509, 4k 553 -> 571, 16k 615 -> 628; 9-block tiles
//             (keys_1152) 553 -> 586, window 1024 468 -> 477. Each step's S product reads
//             only K from shared memory, and the Q buffer goes back to the producer at once.
//   hdim 256  128 x 64,  2 stages (Q 64 KB + K/V 128 KB), no ping-pong. 128 x 80
//             (FlashAttention-3's choice, 224 KB) spills 28 bytes in the mainloop here.
// Measured on H200 and dropped (bf16, TFLOP/s at 2k/8k/16k against the default, same run):
// hdim 128 x 176 keys non-causal 540/631/624 vs 591/603/628; hdim 64 x 192 keys 368/446/449
// vs 412/438/445; hdim 256 ping-pong non-causal 658/703/706 vs 626/677/706 but causal
// 384/510/544 vs 449/530/545 (tests/cuda/sm90_notes.md).
template <typename Element, int kHeadDim>
struct FwdDefaultTraits;

template <typename Element>
struct FwdDefaultTraits<Element, 64> {
  using type = FwdTraits<Element, 64, 128, 3, true>;
};
template <typename Element>
struct FwdDefaultTraits<Element, 128> {
  using type = FwdTraits<Element, 128, 128, 2, true, 0, -1, 2, true>;
};
template <typename Element>
struct FwdDefaultTraits<Element, 256> {
  using type = FwdTraits<Element, 256, 64, 2, false>;
};

// Wide tiles: three consumer warpgroups, 192 x 128 tiles, 3 stages, ping-pong (hdim 64 only;
// void elsewhere). Taken by run_fwd (fwd_launch.cuh) where use_wide_tiles() says so.
template <typename Element, int kHeadDim>
struct FwdWideTraits {
  using type = void;
};
template <typename Element>
struct FwdWideTraits<Element, 64> {
  using type = FwdTraits<Element, 64, 128, 3, true, 0, -1, 3>;
};

// Wide tiles for calls without extras and without a left window edge, except causal (or
// right-bounded) ones of at most 2k queries. H200, bf16 hdim 64, 16k tokens, same run,
// TFLOP/s of 192 x 128 over the 128 x 128 default at seqlen 512/1k/2k/4k/8k/16k:
//   non-causal 1.04/1.05/1.17/1.13/1.18/1.17; causal 0.80/0.80/0.98/1.11/1.20/1.17
//   (short causal rows: 192-row tiles waste more of the diagonal and balance worse);
//   window 1024 at 16k 0.56 of dense against 0.68 (a 192-row band spans 10-11 key blocks of
//   128 for 8 blocks of visible work, the 128-row band 9); the extras kernel with three
//   consumers spills 1,338 bytes (ptxas), with two none.
inline bool use_wide_tiles(const AttnParams& p) {
  constexpr int kMinCausalRows = 2049;
  return !has_extras(p.extra) && p.window_left == kUnbounded &&
         (p.window_right == kUnbounded || p.t >= kMinCausalRows);
}

}  // namespace jax_flash::sm90
