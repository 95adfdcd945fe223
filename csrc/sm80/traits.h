// Tile shapes and CuTe types of the sm80 forward kernel: the one place for sm80 tile heuristics.
//
// Dimension legend: kBlockM query rows per CTA, kBlockN keys per main-loop step,
// kHeadDim the instantiated (padded) head dim, kNWarps warps stacked along M.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

namespace jax_flash::sm80 {

template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;

  static_assert(std::is_same_v<Element, cutlass::half_t> ||
                std::is_same_v<Element, cutlass::bfloat16_t>, "fp16 or bf16 only");
  static_assert(kHeadDim % 64 == 0, "head dim is padded to a multiple of 64");
  static_assert(kBlockM % (16 * kNWarps) == 0, "each warp owns whole m16 row groups");
  static_assert(kBlockN % 16 == 0, "P @ V reads P in k16 slices");

  // Warps split M only, so the row statistics of the softmax stay inside a warp.
  // The N extent 16 of the tile makes one ldmatrix.x4 feed two n8 mmas of the B operand.
  using MmaAtom = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                     cute::SM80_16x8x16_F32F16F16F32_TN,
                                     cute::SM80_16x8x16_F32BF16BF16F32_TN>;
  using TiledMma = cute::TiledMMA<cute::MMA_Atom<MmaAtom>,
                                  cute::Layout<cute::Shape<cute::Int<kNWarps>, cute::_1, cute::_1>>,
                                  cute::Tile<cute::Int<16 * kNWarps>, cute::_16, cute::_16>>;

  // Shared memory rows are stored in 64-element (128-byte) chunks; the XOR swizzle puts the
  // eight 16-byte pieces of 8 consecutive rows in distinct banks, for cp.async writes and
  // ldmatrix reads alike.
  using SmemAtom = decltype(cute::composition(
      cute::Swizzle<3, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::_64>, cute::Stride<cute::_64, cute::_1>>{}));
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemAtom{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(cute::tile_to_shape(
      SmemAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}));
  // V seen as V^T (head dim x keys), the B operand of P @ V; read with ldmatrix.trans.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutKV{},
      cute::make_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{}, cute::GenRowMajor{})));

  static constexpr int kSmemQElems = kBlockM * kHeadDim;
  static constexpr int kSmemKVElems = kBlockN * kHeadDim;
  // Q, K, V; the output tile reuses Q's space in the epilogue.
  static constexpr int kSmemBytes = (kSmemQElems + 2 * kSmemKVElems) * int(sizeof(Element));

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomT = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  // Accumulator -> smem for the output: a thread's C values come in column pairs.
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  // Global <-> shared: 16-byte vectors, 8 threads per 64-element row chunk (128-byte segments).
  using GmemThreadLayout = cute::Layout<cute::Shape<cute::Int<kNThreads / 8>, cute::_8>,
                                        cute::Stride<cute::_8, cute::_1>>;
  using GmemValLayout = cute::Layout<cute::Shape<cute::_1, cute::_8>>;
  using GmemLoad = decltype(cute::make_tiled_copy(
      cute::Copy_Atom<cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, Element>{},
      GmemThreadLayout{}, GmemValLayout{}));
  using GmemStore = decltype(cute::make_tiled_copy(
      cute::Copy_Atom<cute::UniversalCopy<cute::uint128_t>, Element>{}, GmemThreadLayout{},
      GmemValLayout{}));
  static_assert(kBlockM % (kNThreads / 8) == 0 && kBlockN % (kNThreads / 8) == 0,
                "gmem copies tile the blocks exactly");
};

// Default tiles per head dim (fp16 and bf16 alike). `type` is used where the device's
// opt-in shared memory per block holds it; else `fallback` (sm86/sm89 offer 99 KB).
// Measured on an H100 80GB HBM3, 2026-11-21 (bf16, 16k tokens, hidden 2048; TFLOP/s at
// seqlen 2k / 8k / 16k; cuDNN in the same run: hdim 64 441/457/463 non-causal, 360/446/460
// causal; hdim 128 602/627/628 and 456/582/575; hdim 256 634/723/665 and 471/608/637):
//   hdim 64   128x64 w4   non-causal 295/318/316  causal 236/280/309   <- default (no spills)
//             128x128 w4             304/309/320         252/258/301   (spills ~230 B)
//             128x32 w4              226/259/271         178/232/244
//   hdim 128  128x32 w4   non-causal 338/372/374  causal 276/336/352   <- default (no spills)
//             128x64 w4              348/350/351         307/327/344
//             128x128 w8 (older run)     290/328/-           278/300/-
//   hdim 256  128x64 w8   non-causal 326/347/337  causal 262/325/344   <- default, 128 KB smem
//             64x64 w4               327/309/318         292/306/323   <- fallback, 96 KB
//             128x32 w8              269/286/288         253/285/291
// Four warps with 32 query rows each keep ldmatrix traffic at ~0.3 per mma; 16 rows per warp
// doubles it and shared memory bandwidth becomes the limit (the w8 tiles at hdim 64/128).
// Causal figures are heavy-first (see fwd_launch.cuh for the order). Run-to-run spread on the
// same tiles is about 3%.
template <typename Element, int kHeadDim>
struct FwdDefaultTraits;

template <typename Element>
struct FwdDefaultTraits<Element, 64> {
  using type = FwdTraits<Element, 64, 128, 64, 4>;
  using fallback = type;
};
template <typename Element>
struct FwdDefaultTraits<Element, 128> {
  using type = FwdTraits<Element, 128, 128, 32, 4>;
  using fallback = type;
};
template <typename Element>
struct FwdDefaultTraits<Element, 256> {
  using type = FwdTraits<Element, 256, 128, 64, 8>;
  using fallback = FwdTraits<Element, 256, 64, 64, 4>;
};

}  // namespace jax_flash::sm80
