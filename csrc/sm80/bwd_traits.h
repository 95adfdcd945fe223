// Tile shapes of the portable sm80 backward kernel, one default per head dim.
//
// A CTA owns kBlockN keys of one (batch, KV head) and steps over kBlockM query rows at a
// time. Each step runs five warp-level GEMMs; the three output shapes each get their own
// split of the kWarps warps (M-warps x N-warps):
//   S, dP  [kBlockM x kBlockN]   split kSdPWarpsM x (kWarps / kSdPWarpsM)
//   dK, dV [kBlockN x kHeadDim]  split kKVWarpsM  x (kWarps / kKVWarpsM)
//   dQ     [kBlockM x kHeadDim]  split kQWarpsM   x (kWarps / kQWarpsM)
// Every warp tile must be a multiple of 16 x 16 (one ldmatrix.x4 loads two n8 tiles).
#pragma once

namespace jax_flash::sm80 {

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_, int kSdPWarpsM_,
          int kKVWarpsM_, int kQWarpsM_, bool kDoubleBuffer_, int kQPasses_ = 1,
          int kCtasPerSm_ = 1, bool kBulkDq_ = false, bool kLateExp_ = false,
          bool kRotate_ = false>
struct BwdConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;  // query rows per step
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  // CTAs the kernel is compiled to fit on one SM (registers: 64K / (threads x this)).
  static constexpr int kCtasPerSm = kCtasPerSm_;
  // Q and dO are double-buffered when shared memory allows: the next step's tiles
  // then load while this step computes.
  static constexpr bool kDoubleBuffer = kDoubleBuffer_;
  static constexpr int kStages = kDoubleBuffer ? 2 : 1;

  static constexpr int kSdPWarpsM = kSdPWarpsM_;
  static constexpr int kSdPWarpsN = kWarps / kSdPWarpsM;
  static constexpr int kKVWarpsM = kKVWarpsM_;
  static constexpr int kKVWarpsN = kWarps / kKVWarpsM;
  static constexpr int kQWarpsM = kQWarpsM_;
  static constexpr int kQWarpsN = kWarps / kQWarpsM;
  // dQ is computed in this many column slices (fewer live registers, more A reloads).
  static constexpr int kQPasses = kQPasses_;
  // sm90 and newer: each warp stages its 32 x 32 dQ tile in shared memory and adds it to
  // dq_accum with one TMA reduction (cp.reduce.async.bulk.tensor) instead of 16 vector
  // atomics per thread. Needs the extra shared memory below (Hopper: 227 KB per CTA) and a
  // tensor map of dq_accum; compiled for older architectures it falls back to the atomics.
  static constexpr bool kBulkDq = kBulkDq_;
  // The exponentials of P run after the dP product is issued (both in one basic block), so
  // the scheduler can interleave the SFU work with the tensor-core work of the same warp.
  static constexpr bool kLateExp = kLateExp_;
  // Each CTA starts its walk over the query blocks at a different block (rotating by its
  // key-block index), so concurrent CTAs add into different dQ rows.
  static constexpr bool kRotate = kRotate_;

  // Warp tiles.
  static constexpr int kSdPTileM = kBlockM / kSdPWarpsM;
  static constexpr int kSdPTileN = kBlockN / kSdPWarpsN;
  static constexpr int kKVTileM = kBlockN / kKVWarpsM;
  static constexpr int kKVTileN = kHeadDim / kKVWarpsN;
  static constexpr int kQTileM = kBlockM / kQWarpsM;
  static constexpr int kQTileN = kHeadDim / kQWarpsN;

  static_assert(kSdPWarpsM * kSdPWarpsN == kWarps && kKVWarpsM * kKVWarpsN == kWarps &&
                kQWarpsM * kQWarpsN == kWarps, "warp splits must use every warp");
  static_assert(kSdPTileM % 16 == 0 && kSdPTileN % 16 == 0, "S/dP warp tile");
  static_assert(kKVTileM % 16 == 0 && kKVTileN % 16 == 0, "dK/dV warp tile");
  static_assert(kQTileM % 16 == 0 && kQTileN % (16 * kQPasses) == 0, "dQ warp tile");
  // The 16-byte-chunk XOR swizzle permutes 8 chunks, so every smem row spans >= 64 elements.
  static_assert(kHeadDim >= 64 && kBlockN >= 64, "smem rows must be >= 64 elements");
  static_assert(2 * kBlockM <= kThreads, "one thread per lse and per delta value");

  // Shared memory, in bytes (16-bit elements; lse and delta in float).
  static constexpr int kTileKBytes = kBlockN * kHeadDim * 2;  // K, and V
  static constexpr int kTileQBytes = kBlockM * kHeadDim * 2;  // Q, and dO, per stage
  static constexpr int kTilePBytes = kBlockM * kBlockN * 2;   // P, and dS
  static constexpr int kSmemK = 0;
  static constexpr int kSmemV = kSmemK + kTileKBytes;
  static constexpr int kSmemQ = kSmemV + kTileKBytes;
  static constexpr int kSmemDO = kSmemQ + kStages * kTileQBytes;
  static constexpr int kSmemP = kSmemDO + kStages * kTileQBytes;
  static constexpr int kSmemDS = kSmemP + kTilePBytes;
  static constexpr int kSmemLse = kSmemDS + kTilePBytes;
  static constexpr int kSmemDelta = kSmemLse + kStages * kBlockM * 4;
  // dQ staging for the bulk reduction: two 32 x 32 float boxes per warp and dQ pass (used
  // by alternate steps), at a 1024-byte boundary (the 128-byte TMA swizzle repeats every 8
  // rows of 128 bytes; the slack covers a base that is not so aligned).
  static constexpr int kDqBoxBytes = 32 * 32 * 4;
  static constexpr int kSmemDq = kSmemDelta + kStages * kBlockM * 4;
  static constexpr int kSmemBytes =
      kSmemDq + (kBulkDq ? 1024 + 2 * kWarps * kQPasses * kDqBoxBytes : 0);
};

// Defaults. `Config` fits the 163 KB an sm80 CTA may use, so one build runs on A100 and H100;
// `Sm90Config` is what run_bwd launches where the device has 227 KB per CTA, sm90 and TMA
// (the Hopper SASS of these kernels), else `Config`.
// Measured on an H100 SXM (bf16, 16k tokens, hidden 2048, kernel alone, median of 5 x 10,
// TFLOP/s at seqlen 2k / 8k / 16k, non-causal then causal; tests/cuda/bwd_e2e.sh, one run
// 2026-11-21). Variant legend: T = kBulkDq (TMA dQ), L = kLateExp, R = kRotate.
template <int kHeadDim>
struct BwdTraits;

// hdim 64: 128 x 128 tiles, 162 KB smem (Sm90Config 227 KB).
//   none  246 / 257 / 258,  221 / 248 / 257      T    245 / 260 / 261,  224 / 249 / 262
//   L     253 / 266 / 265,  227 / 253 / 266      TL   264 / 275 / 275,  235 / 264 / 276
//   TLR   266 / 278 / 277,  237 / 264 / 278      R alone 0.9% slower than none.
// Earlier: Br = 64 (97 KB) ran 216 / 231 at 2k / 16k, and 64 x 64 tiles of 4 warps at 2 CTAs
// per SM 212 / 228. ptxas: Config 0 spills for sm_80, 8 bytes for sm_90; Sm90Config none.
template <>
struct BwdTraits<64> {
  using Config = BwdConfig<64, 128, 128, 8, 2, 4, 4, true, 1, 1, false, true>;
  using Sm90Config = BwdConfig<64, 128, 128, 8, 2, 4, 4, true, 1, 1, true, true, true>;
};

// hdim 128: 64 queries x 128 keys, 161 KB smem (Sm90Config 226 KB).
//   none  277 / 290 / 289,  242 / 260 / 291      T    276 / 289 / 289,  242 / 272 / 291
//   L     284 / 299 / 300,  250 / 267 / 296      TL   285 / 299 / 300,  251 / 279 / 301
//   TLR   283 / 298 / 300,  249 / 281 / 300 (32 bytes of spills); R alone 0.6% slower.
// Earlier: dK/dV warps split 2 x 4 instead of 4 x 2 measured the same; 64 x 64 tiles of 4
// warps at 2 CTAs per SM ran 228 / 238 (twice the dQ atomics and Q/dO reloads per FLOP).
// H200 (bwd_check variant, one run, 2026-11-21): TL 282 / 295 / 297, 246 / 279 / 296;
//   L 284 / 296 / 298, 247 / 279 / 299 (TMA dQ buys nothing there). One barrier per step
//   instead of two (Q/dO in 3 stages, P/dS in 2, no dQ staging: 225 KB) ran 282 / 296 / 298,
//   246 / 279 / 297: the barriers are not what limits it; dropped. S and dP in one k loop
//   (twice the independent MMAs per k step) ran 1-4% slower; dropped.
//   End to end (examples/benchmark.py --peers jax_flash_sm80,cudnn, one run), bwd TFLOP/s at
//   2k / 4k / 8k / 16k: 271 / 281 / 291 / 298 non-causal (0.58 / 0.59 / 0.57 / 0.56 of cuDNN),
//   217 / 251 / 272 / 297 causal (0.59 / 0.59 / 0.60 / 0.58). With causal CTAs launched
//   heavy first (bwd_launch.cuh default_bwd_order; another run): 268 / 280 / 293 / 299
//   non-causal (0.57 / 0.58 / 0.56 / 0.56), 231 / 263 / 285 / 298 causal (0.62 / 0.57 /
//   0.62 / 0.59; cuDNN's causal 4k 458 there against 425 before).
// ptxas: Config 0 spills for sm_80, 4 bytes for sm_90; Sm90Config none.
template <>
struct BwdTraits<128> {
  using Config = BwdConfig<128, 64, 128, 8, 2, 4, 2, true, 1, 1, false, true>;
  using Sm90Config = BwdConfig<128, 64, 128, 8, 2, 4, 2, true, 1, 1, true, true>;
};

// hdim 256: 64 x 64; Q/dO single-buffered to stay under 163 KB (145 KB); dQ in two
// passes (dK and dV already hold 128 registers): 205 at 4k, 209 at 16k (cuDNN 359 / 357).
// The variants above are not measured here.
template <>
struct BwdTraits<256> {
  using Config = BwdConfig<256, 64, 64, 8, 4, 2, 2, false, 2>;
  using Sm90Config = Config;
};

}  // namespace jax_flash::sm80
