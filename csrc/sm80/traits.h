// Tile shapes and CuTe types of the sm80 forward kernel: the one place for sm80 tile heuristics.
//
// Dimension legend: kBlockM query rows per CTA, kBlockN keys per main-loop step,
// kHeadDim the instantiated (padded) head dim, kNWarps warps stacked along M.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

namespace jax_flash::sm80 {

// kStages: 1 = one K and one V buffer (each load overlaps the other's math, two barriers per
// step); 2 = two K/V buffer pairs (the next tile's K and V load during the whole step, one
// barrier per step).
template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_,
          int kStages_ = 1>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kStages = kStages_;
  static_assert(kStages == 1 || kStages == 2, "one or two K/V stages");
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
  // Q, then K, V per stage; the output tile reuses Q's space in the epilogue.
  static constexpr int kSmemBytes = (kSmemQElems + 2 * kStages * kSmemKVElems) * int(sizeof(Element));

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

// Default tiles per head dim (fp16 and bf16 alike). `type` is used where the device's shared
// memory holds kCtas of its blocks per multiprocessor; else `fallback` (sm86/sm89 offer 99 KB
// per block and 100 KB per SM, sm80 164 KB per SM, sm90 227 KB). At hdim 128 that keeps two
// CTAs (8 warps) per SM: the 96 KB two-stage tile runs on Hopper, the 48 KB one elsewhere
// (two-stage timings exist for Hopper only).
// Measured on an H100 80GB HBM3, 2026-11-21 (bf16, 16k tokens, hidden 2048; TFLOP/s at
// seqlen 2k / 8k / 16k; cuDNN in the same run: hdim 64 441/457/463 non-causal, 360/446/460
// causal; hdim 128 602/627/628 and 456/582/575; hdim 256 634/723/665 and 471/608/637):
//   hdim 64   128x64 w4   non-causal 295/318/316  causal 236/280/309   <- default (no spills)
//             128x128 w4             304/309/320         252/258/301   (spills ~230 B)
//             128x32 w4              226/259/271         178/232/244
//   hdim 128  128x32 w4   non-causal 338/372/374  causal 276/336/352   <- now the fallback
//             128x64 w4              348/350/351         307/327/344
//             128x128 w8 (older run)     290/328/-           278/300/-
//   hdim 256  128x64 w8   non-causal 326/347/337  causal 262/325/344   <- default, 128 KB smem
//             64x64 w4               327/309/318         292/306/323   <- fallback, 96 KB
//             128x32 w8              269/286/288         253/285/291
// Four warps with 32 query rows each keep ldmatrix traffic at ~0.3 per mma; 16 rows per warp
// doubles it and shared memory bandwidth becomes the limit (the w8 tiles at hdim 64/128).
// Causal figures are heavy-first (see fwd_launch.cuh for the order). Run-to-run spread on the
// same tiles is about 3%.
//
// hdim 128, two K/V stages (kStages = 2), measured on an H200 in one run, 2026-11-21 (same
// protocol, tests/cuda/fwd_check.cu bench):
//             128x32 w4     non-causal 346/366/372  causal 296/350/343   (the old default)
//             128x32 w4 s2             337/360/363         319/342/345
//             128x64 w4 s2             351/373/381         335/358/381   <- default, 96 KB
//             128x64 w4                339/346/345         307/320/348
//             256x64 w8 s2             324/365/366         295/343/365
//   (an earlier run: 256x32 w8 298/314/319 and 258/309/319; 64x64 w4 303/306/303, 259/280/300)
// The second stage gives each K/V load a whole step to land and leaves one barrier per step;
// it pays at 64 keys per step, not at 32. Its cost: 48 bytes of spills (7 L1 loads of
// loop-invariant addresses per step), measured faster all the same. End to end
// (examples/benchmark.py, H200, bf16, fwd, seqlen 2k/4k/8k/16k) the sm80 forward is
// 0.60/0.59/0.61/0.64 of cuDNN non-causal and 0.74/0.67/0.67/0.70 causal.
//
// `extras` are the tiles of calls with lengths, segments, bias, mask or softcap (the
// kExtras instantiation): at hdim 128 the 128x32 w4 kernel, since the 128x64 two-stage one
// puts its arrays in local memory (2.5 KB stack) once the element path is added. Issue 5's
// points at seqlen 16k (H200, TFLOP/s over visible pairs; dense 399): window (1024, 0) 304,
// window (512, 512) 310 (both the dense kernel), 8 packed documents of 2k 303, the same
// causal 275.
template <typename Element, int kHeadDim>
struct FwdDefaultTraits;

template <typename Element>
struct FwdDefaultTraits<Element, 64> {
  using type = FwdTraits<Element, 64, 128, 64, 4>;
  using fallback = type;
  using extras = type;
  using extras_fallback = type;
  static constexpr int kCtas = 1;
};
template <typename Element>
struct FwdDefaultTraits<Element, 128> {
  using type = FwdTraits<Element, 128, 128, 64, 4, 2>;  // 96 KB
  using fallback = FwdTraits<Element, 128, 128, 32, 4>;  // 48 KB
  using extras = fallback;
  using extras_fallback = fallback;
  static constexpr int kCtas = 2;
};
template <typename Element>
struct FwdDefaultTraits<Element, 256> {
  using type = FwdTraits<Element, 256, 128, 64, 8>;
  using fallback = FwdTraits<Element, 256, 64, 64, 4>;
  using extras = type;
  using extras_fallback = fallback;
  static constexpr int kCtas = 1;
};

}  // namespace jax_flash::sm80
