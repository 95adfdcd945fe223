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
          int kCtasPerSm_ = 1>
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
  static constexpr int kSmemBytes = kSmemDelta + kStages * kBlockM * 4;
};

// Defaults. All fit the 163 KB an sm80 CTA may use, so one build runs on A100 and H100.
// Measured on an H100 SXM (bf16, 16k tokens, hidden 2048, kernel alone, TFLOP/s at
// seqlen 2k / 16k, non-causal; same run: cuDNN 459 / 526 and FA2 264 / 314 at hdim 128,
// cuDNN 391 / 450 and FA2 245 / 277 at hdim 64).
template <int kHeadDim>
struct BwdTraits;

// hdim 64: 128 x 128 tiles, 162 KB smem: 250 / 260. Br = 64 (97 KB) ran 216 / 231, and
// 64 x 64 tiles of 4 warps at 2 CTAs per SM 212 / 228. At 255 registers ptxas spills 8 bytes
// here (reloaded twice per step, in the copy set-up and the masked-tile path); kept, as the
// spill-free Br = 64 is 11% slower.
template <>
struct BwdTraits<64> {
  using Config = BwdConfig<64, 128, 128, 8, 2, 4, 4, true>;
};

// hdim 128: 64 queries x 128 keys, 161 KB smem: 277 / 290 (causal 241 / 291). dK/dV warps
// split 2 x 4 instead of 4 x 2 measured the same; 64 x 64 tiles of 4 warps at 2 CTAs per
// SM ran 228 / 238 (twice the dQ atomics and Q/dO reloads per FLOP).
template <>
struct BwdTraits<128> {
  using Config = BwdConfig<128, 64, 128, 8, 2, 4, 2, true>;
};

// hdim 256: 64 x 64; Q/dO single-buffered to stay under 163 KB (145 KB); dQ in two
// passes (dK and dV already hold 128 registers): 205 at 4k, 209 at 16k (cuDNN 359 / 357).
template <>
struct BwdTraits<256> {
  using Config = BwdConfig<256, 64, 64, 8, 4, 2, 2, false, 2>;
};

}  // namespace jax_flash::sm80
