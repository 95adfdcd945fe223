// Portable backward attention kernel (FlashAttention-2 scheme) on mma.sync tensor cores.
//
// Dimension legend (params.h):
//   B batch, T query length, S key length, N query heads, K KV heads, G = N / K,
//   H head dim (h at run time, kHeadDim compiled; columns h..kHeadDim are zero-filled).
//   Br = kBlockM query rows per step, Bc = kBlockN keys per CTA.
//   i: query row, j: key row; scores s_ij = q_i . k_j.
//
// One CTA per (Bc-block of keys, batch, KV head), launched in BwdOrder. K and V stay in
// shared memory; the CTA walks the G query heads of its group and, for each, the Br-blocks
// of queries that see its keys (the band). Per step, with P = exp(scale * S - lse):
//   S  = Q K^T      dP = dO V^T      dS = P * (dP - delta)
//   dV += P^T dO    dK += dS^T Q     (registers, summed over the whole group: no atomics)
//   dQ  = dS K      (added into float32 dq_accum: vector atomics, or on sm90 with kBulkDq
//                    one TMA reduction per warp tile, staged in shared memory)
// P and dS go through shared memory so the transposed products can read them with
// ldmatrix.trans. Every shared tile is stored as rows of 16-byte chunks whose chunk index
// is XORed with (row % 8): ldmatrix and cp.async then touch 8 distinct chunks per 8 rows,
// free of bank conflicts.
//
// Extras (kExtras != kNoExtras, common/mask.h): lengths shrink the key block and the band
// (rows past q_seqlen load as zeros and add nothing); segment ids drop the query blocks
// whose id span cannot meet the CTA's keys (counted before the loop, so the prefetch always
// loads the next visited block); tiles with bias, mask or softcap, or with more than one
// segment id, take the element path: every pair through Extras::visible and Extras::logit,
//   P = exp(logit - lse)   dS = P * (dP - delta)   dbias += dS   dS *= 1 - tanh^2 (softcap)
// before the same dK/dV/dQ products. Other tiles run the fast step of the no-extras kernel.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include <cutlass/numeric_types.h>

#include "common/mask.h"
#include "params.h"
#include "sm80/bwd_traits.h"

namespace jax_flash::sm80::bwd {

// ---------------------------------------------------------------------------------------
// PTX wrappers.

// The lane index, read afresh. Values derived from it are then recomputed where used
// instead of being hoisted and kept live across the main loop (registers are the limit).
__device__ __forceinline__ int lane_id() {
  int lane;
  asm volatile("mov.u32 %0, %%laneid;\n" : "=r"(lane));
  return lane;
}

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte global->shared copy; reads nothing and writes zeros when !valid.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 4 : 0));
}

// Fire-and-forget float add (dbias: broadcast dims sum, so pairs collide across CTAs).
__device__ __forceinline__ void red_add_f32(float* ptr, float v) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(ptr), "f"(v) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// sm90 tensor-memory-access reduction: global tile (described by `map`, at coordinates
// c0..c3, innermost first) += the shared-memory box at `src`, tracked in bulk groups.
__device__ __forceinline__ void tma_add_4d(const CUtensorMap& map, uint32_t src, int c0, int c1,
                                           int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], "
      "[%1];\n" ::"l"(reinterpret_cast<uint64_t>(&map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// All but this thread's newest bulk group have read their shared-memory source.
__device__ __forceinline__ void bulk_wait_read_all_but_newest() {
  asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");
}

__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Orders this thread's earlier shared-memory stores before later async-proxy (TMA) reads.
__device__ __forceinline__ void fence_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a * b for one m16n8k16 tile, float32 accumulation.
template <typename Element>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<Element, cutlass::bfloat16_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> two 16-bit values in one register (x in the low half: the lower column).
template <typename Element>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<Element, cutlass::bfloat16_t>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// ---------------------------------------------------------------------------------------
// Swizzled shared tiles and the warp GEMM.

// Byte offset of (row, 16-byte chunk) in a tile with kCols 16-bit elements per row.
// `swz` must equal row % 8; callers pass lane % 8, which it is for every ldmatrix below.
template <int kCols>
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk, int swz) {
  return row * (kCols * 2) + ((chunk ^ swz) << 4);
}

// acc[mt][nt] += A[m0 + 16 mt.., :kK] * B[:kK, n0 + 8 nt..] for one warp, A and B in smem.
//   kATrans = false: A stored [M][K] (row m holds k contiguous), kACols elements per row;
//   kATrans = true:  A stored [K][M].
//   kBTrans = false: B stored [N][K];  kBTrans = true: B stored [K][N].
// Fragment layouts follow the PTX ISA for mma.m16n8k16 (.row.col); the ldmatrix lane
// addressing below puts each 8x8 sub-matrix where that layout expects it.
//
// Addresses: every lane's row is = lane (mod 8), so its swizzle key is lane % 8. Along k
// a non-transposed operand steps through chunks 2ks + c (c = 0 or 1); XOR does not
// distribute over that sum, but ((2ks) ^ key) only depends on ks % 4 inside an aligned
// group of 8 chunks, so four per-lane offsets plus immediates cover every k-step.
// The lane index is re-read here so the compiler rebuilds these few offsets per call
// instead of keeping dozens of hoisted addresses alive across the whole loop.
template <typename Element, int kMT, int kNT, int kK, bool kATrans, int kACols, bool kBTrans,
          int kBCols>
__device__ __forceinline__ void warp_gemm(float (&acc)[kMT][kNT][4], uint32_t a_base, int m0,
                                          uint32_t b_base, int n0) {
  static_assert(kNT % 2 == 0 && kK % 16 == 0, "warp tile shape");
  const int lane = lane_id();
  const int swz = lane & 7;

  // A: lane-dependent part of each address; the rest are compile-time offsets.
  uint32_t a_lane[kATrans ? kMT : 4];
  if constexpr (!kATrans) {
    // Matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
    const uint32_t row = a_base + (m0 + (lane & 15)) * (kACols * 2);
    const int key = (lane >> 4) ^ swz;
#pragma unroll
    for (int q = 0; q < 4; ++q) a_lane[q] = row + (((2 * q) ^ key) << 4);
  } else {
    // Stored rows are k: (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15).
    const uint32_t row = a_base + ((lane & 7) + ((lane >> 4) << 3)) * (kACols * 2);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
      a_lane[mt] = row + (((((m0 + mt * 16) >> 3) + ((lane >> 3) & 1)) ^ swz) << 4);
  }
  uint32_t b_lane[kBTrans ? kNT / 2 : 4];
  if constexpr (!kBTrans) {
    // (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
    const uint32_t row = b_base + (n0 + (lane & 7) + ((lane >> 4) << 3)) * (kBCols * 2);
    const int key = ((lane >> 3) & 1) ^ swz;
#pragma unroll
    for (int q = 0; q < 4; ++q) b_lane[q] = row + (((2 * q) ^ key) << 4);
  } else {
    // Stored rows are k: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
    const uint32_t row = b_base + ((lane & 7) + (((lane >> 3) & 1) << 3)) * (kBCols * 2);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np)
      b_lane[np] = row + (((((n0 + np * 16) >> 3) + (lane >> 4)) ^ swz) << 4);
  }

#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if constexpr (!kATrans) {
        ldsm_x4(a[mt], a_lane[ks % 4] + mt * 16 * (kACols * 2) + (ks / 4) * 128);
      } else {
        ldsm_x4_trans(a[mt], a_lane[mt] + ks * 16 * (kACols * 2));
      }
    }
    uint32_t b[kNT][2];
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t r[4];
      if constexpr (!kBTrans) {
        ldsm_x4(r, b_lane[ks % 4] + np * 16 * (kBCols * 2) + (ks / 4) * 128);
      } else {
        ldsm_x4_trans(r, b_lane[np] + ks * 16 * (kBCols * 2));
      }
      b[2 * np][0] = r[0];
      b[2 * np][1] = r[1];
      b[2 * np + 1][0] = r[2];
      b[2 * np + 1][1] = r[3];
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mma_16816<Element>(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
    }
  }
}

template <int kMT, int kNT>
__device__ __forceinline__ void zero(float (&acc)[kMT][kNT][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

// Copies rows [0, valid_rows) x columns [0, valid_cols) of a global tile into a swizzled
// smem tile of kRows x kCols, zero-filling the rest. `row_stride` is in elements.
template <int kRows, int kCols, int kThreads, typename Element>
__device__ __forceinline__ void load_tile(uint32_t dst, const Element* src, int64_t row_stride,
                                          int valid_rows, int valid_cols, unsigned tid) {
  constexpr int kChunksPerRow = kCols / 8;
  // Each pass covers kRowsPerPass whole rows; a multiple of 8 keeps every thread's
  // swizzle key (row % 8) fixed, so later passes are plain offsets from the first.
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kRowsPerPass % 8 == 0 &&
                    kRows % kRowsPerPass == 0,
                "tile copy must split into whole rows, 8 at a time");
  const int chunk = tid % kChunksPerRow;
  const int row = tid / kChunksPerRow;
  const bool col_ok = chunk * 8 < valid_cols;
  const Element* first = src + row * row_stride + chunk * 8;
  const uint32_t first_dst = dst + tile_offset<kCols>(row, chunk, row & 7);
#pragma unroll
  for (int i = 0; i < kRows / kRowsPerPass; ++i) {
    const bool valid = col_ok && row + i * kRowsPerPass < valid_rows;
    const Element* p = first + i * kRowsPerPass * row_stride;
    cp_async_16(first_dst + i * kRowsPerPass * (kCols * 2), valid ? p : src, valid);
  }
}

// What one instantiation handles beyond the dense problem. Bias, dbias and softcap get their
// own kernel: one kernel for all extras spilled 16 dK/dV accumulators around the dK/dV
// products of every step (240 bytes, hdim 128 Sm90Config, sm_90), which cost the packed-
// document case 9% (H200: 240 -> 263 TFLOP/s after the split). ptxas now, spill stores /
// loads in bytes, sm_90 Sm90Config: hdim 64 kMasks 8 / 20, kLogits 48 / 36; hdim 128 kMasks
// 0 / 0, kLogits 136 / 104 (36 / 52 and 192 / 140 before the segment scan was clipped to the
// keys' partner rows: register allocation moves with small changes); hdim 256 none.
enum BwdExtras : int {
  kNoExtras = 0,
  kMasks = 1,   // lengths, segment ids, dense mask: visibility only
  kLogits = 2,  // and bias (with dbias) and softcap: the logits change too
};

// Which (key block, KV head, batch) each CTA takes. The grid is (X, K, Z), x fastest in
// launch order; the key block and the batch are x and z or z and x:
//   keys fastest: grid (key blocks, K, B): CTAs resident together share one head's Q, dO
//                 and dQ rows in L2;
//   heavy first:  grid (B, K, key blocks): one key block of every (batch, KV head), key
//                 block 0 first: with a causal mask the first key blocks see the most
//                 queries, so the last wave holds the lightest CTAs.
// A template parameter, which doubles a config's kernels (the hdim-128 bwd translation unit
// compiles in 25 s instead of 14 s on 2 cores; bwd_launch.cuh compiles heavy first only
// where it is a default): chosen at run time (a select, or multiply-adds from constants), it
// cost the hdim-128 no-extras kernel 16-28 bytes of spills in its main loop (ptxas, sm_90,
// 255 registers), where either order alone compiles with none.
enum class BwdOrder : int { kKeysFastest = 0, kHeavyFirst = 1 };

// The no-extras kernel's stand-in for Extras: full lengths, nothing else.
struct NoExtras {
  int valid_rows, valid_keys;
  __device__ __forceinline__ NoExtras(const AttnParams& p, int, int)
      : valid_rows(p.t), valid_keys(p.s) {}
};

// ---------------------------------------------------------------------------------------
// The kernel.

template <typename Element, typename Cfg, int kExtras, BwdOrder kOrder>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kCtasPerSm)
    bwd_kernel(const __grid_constant__ BwdParams p, const __grid_constant__ CUtensorMap dq_map) {
  constexpr int kH = Cfg::kHeadDim;
  constexpr int kBr = Cfg::kBlockM;
  constexpr int kBc = Cfg::kBlockN;
  constexpr int kThreads = Cfg::kThreads;
  // Fragment counts of each warp tile (m16 rows, n8 columns).
  constexpr int kSdPMT = Cfg::kSdPTileM / 16, kSdPNT = Cfg::kSdPTileN / 8;
  constexpr int kKVMT = Cfg::kKVTileM / 16, kKVNT = Cfg::kKVTileN / 8;
  constexpr int kQMT = Cfg::kQTileM / 16, kQNT = Cfg::kQTileN / 8;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_base = smem_u32(smem);
  const uint32_t sK = s_base + Cfg::kSmemK;
  const uint32_t sV = s_base + Cfg::kSmemV;
  const uint32_t sP = s_base + Cfg::kSmemP;
  const uint32_t sDS = s_base + Cfg::kSmemDS;
  const float* sLse = reinterpret_cast<const float*>(smem + Cfg::kSmemLse);
  const float* sDelta = reinterpret_cast<const float*>(smem + Cfg::kSmemDelta);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  // Accumulator element e of an m16n8 tile sits at row lane / 4 (+ 8 for e >= 2) and
  // column 2 (lane % 4) + (e % 2).

  constexpr bool kHeavyFirst = kOrder == BwdOrder::kHeavyFirst;
  const int n_block = kHeavyFirst ? blockIdx.z : blockIdx.x;
  const int kv_head = blockIdx.y;
  const int batch = kHeavyFirst ? blockIdx.x : blockIdx.z;
  const int n_start = n_block * kBc;
  // Lengths: keys >= key_end and rows >= row_end see nothing (p.s and p.t without extras).
  std::conditional_t<kExtras != kNoExtras, Extras, NoExtras> ex(p, batch, kv_head * p.group);
  const int key_end = ex.valid_keys;
  const int row_end = ex.valid_rows;
  // <= 0 (extras only) when the whole key block lies past kv_seqlen: dK = dV = 0.
  const int n_valid = min(kBc, key_end - n_start);

  // The band: queries i that see at least one of keys [n_start, n_start + n_valid), as
  // query blocks [m_begin, m_end). A function so the loop can recompute m_begin from
  // constants instead of holding it in a register.
  const bool left_bounded = p.window_left < kUnbounded;
  const bool right_bounded = p.window_right < kUnbounded;
  auto first_block = [&](int block_start) {
    const int64_t lo = right_bounded ? max(int64_t{0}, int64_t{block_start} - p.window_right) : 0;
    return static_cast<int>(lo / kBr);
  };
  const int64_t i_lo = right_bounded ? max(int64_t{0}, int64_t{n_start} - p.window_right) : 0;
  const int64_t i_hi = left_bounded
                           ? min(int64_t{row_end}, int64_t{n_start} + n_valid + p.window_left)
                           : int64_t{row_end};
  const int m_begin = first_block(n_start);
  const int m_end = (kExtras == kNoExtras || n_valid > 0) && i_hi > i_lo
                        ? static_cast<int>((i_hi + kBr - 1) / kBr)
                        : m_begin;
  const int num_m = m_end - m_begin;

  // Segments: the band's query blocks whose id span meets the keys' are visited, from m_lo
  // to m_hi - 1 (the walk skips the others in between); all of them without segments.
  int m_lo = m_begin, m_hi = m_end, num_visited = num_m;
  int2 key_span = make_int2(0, 0);
  auto block_meets = [&](int m) {
    if constexpr (kExtras != kNoExtras) {
      return Extras::spans_meet(ex.row_span(m * kBr, min(m * kBr + kBr, row_end)), key_span);
    }
    return true;
  };
  if constexpr (kExtras != kNoExtras) {
    if (ex.has_segments() && num_m > 0) {
      key_span = ex.key_span(n_start, n_start + n_valid);
      // Only the query chunks that may match the keys (for packed documents, the keys'
      // documents) are scanned.
      const Range partners = ex.key_partners(n_start, n_start + n_valid);
      const int scan_begin = max(m_begin, partners.lo / kBr);
      const int scan_end = min(m_end, (partners.hi + kBr - 1) / kBr);
      // Reduced in the P tile, which the first step writes only after its barrier.
      int* scan = reinterpret_cast<int*>(smem + Cfg::kSmemP);
      if (tid == 0) {
        scan[0] = m_end;
        scan[1] = m_begin - 1;
        scan[2] = 0;
      }
      __syncthreads();
      int lo = m_end, hi = m_begin - 1, count = 0;
      for (int m = scan_begin + tid; m < scan_end; m += kThreads) {
        if (block_meets(m)) {
          lo = min(lo, m);
          hi = max(hi, m);
          ++count;
        }
      }
      if (count > 0) {
        atomicMin(&scan[0], lo);
        atomicMax(&scan[1], hi);
        atomicAdd(&scan[2], count);
      }
      __syncthreads();
      m_lo = scan[0];
      m_hi = scan[1] + 1;
      num_visited = scan[2];
    }
  }
  const int num_steps = p.group * num_visited;

  const Element* k_ptr = static_cast<const Element*>(p.k) + batch * p.k_batch_stride +
                         kv_head * p.k_head_stride + int64_t{n_start} * p.k_row_stride;
  const Element* v_ptr = static_cast<const Element*>(p.v) + batch * p.v_batch_stride +
                         kv_head * p.v_head_stride + int64_t{n_start} * p.v_row_stride;
  load_tile<kBc, kH, kThreads>(sK, k_ptr, p.k_row_stride, n_valid, p.h, tid);
  load_tile<kBc, kH, kThreads>(sV, v_ptr, p.v_row_stride, n_valid, p.h, tid);

  // Issues the loads of one step: Q, dO, lse, delta of query head `head`, query block m.
  auto load_step = [&](int head, int m, int stage) {
    // Re-read so the per-thread copy offsets are recomputed here, not held across the loop.
    int tid;
    asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(tid));
    const int m0 = m * kBr;
    const int valid_rows = min(kBr, row_end - m0);
    const Element* q = static_cast<const Element*>(p.q) + batch * p.q_batch_stride +
                       head * p.q_head_stride + int64_t{m0} * p.q_row_stride;
    const Element* dout = static_cast<const Element*>(p.dout) + batch * p.do_batch_stride +
                          head * p.do_head_stride + int64_t{m0} * p.do_row_stride;
    load_tile<kBr, kH, kThreads>(s_base + Cfg::kSmemQ + stage * Cfg::kTileQBytes, q,
                                 p.q_row_stride, valid_rows, p.h, tid);
    load_tile<kBr, kH, kThreads>(s_base + Cfg::kSmemDO + stage * Cfg::kTileQBytes, dout,
                                 p.do_row_stride, valid_rows, p.h, tid);
    // Rows past T read lse = delta = 0: their Q and dO rows are zero, so they contribute 0.
    const int64_t row_offset = (int64_t{batch} * p.n + head) * p.t + m0;
    if (tid < kBr) {
      cp_async_4(s_base + Cfg::kSmemLse + (stage * kBr + tid) * 4,
                 p.lse + row_offset + (tid < valid_rows ? tid : 0), tid < valid_rows);
    } else if (tid < 2 * kBr) {
      const int r = tid - kBr;
      cp_async_4(s_base + Cfg::kSmemDelta + (stage * kBr + r) * 4,
                 p.delta + row_offset + (r < valid_rows ? r : 0), r < valid_rows);
    }
  };

  // Steps walk the query blocks [m_begin, m_end) of each head of the group in turn, from
  // m_first on and wrapping around (m_first = m_begin unless kRotate; the extras kernel
  // does not rotate, and walks the visited blocks [m_lo, m_hi)).
  constexpr bool kRotate = Cfg::kRotate && kExtras == kNoExtras;
  const int m_first = kRotate && num_m > 0 ? m_begin + n_block % num_m : m_lo;
  int head = kv_head * p.group;
  int m_blk = m_first;
  if (num_steps > 0) load_step(head, m_blk, 0);
  cp_async_commit();

  float acc_dk[kKVMT][kKVNT][4];
  float acc_dv[kKVMT][kKVNT][4];
  zero(acc_dk);
  zero(acc_dv);

  // Warp tile origins.
  const int sdp_m0 = (warp % Cfg::kSdPWarpsM) * Cfg::kSdPTileM;
  const int sdp_n0 = (warp / Cfg::kSdPWarpsM) * Cfg::kSdPTileN;
  const int kv_m0 = (warp % Cfg::kKVWarpsM) * Cfg::kKVTileM;
  const int kv_n0 = (warp / Cfg::kKVWarpsM) * Cfg::kKVTileN;
  const int q_m0 = (warp % Cfg::kQWarpsM) * Cfg::kQTileM;
  const int q_n0 = (warp / Cfg::kQWarpsM) * Cfg::kQTileN;

  constexpr float kLog2e = 1.4426950408889634f;

  for (int step = 0; step < num_steps; ++step) {
    const int stage = Cfg::kDoubleBuffer ? (step & 1) : 0;
    const uint32_t sQ = s_base + Cfg::kSmemQ + stage * Cfg::kTileQBytes;
    const uint32_t sDO = s_base + Cfg::kSmemDO + stage * Cfg::kTileQBytes;
    const int m0 = m_blk * kBr;
    int next_m, next_head = head;
    if constexpr (kRotate) {
      const bool last_of_head = m_blk + 1 == (m_first == m_begin ? m_end : m_first);
      next_m = last_of_head ? m_first : (m_blk + 1 == m_end ? m_begin : m_blk + 1);
      next_head += last_of_head;
    } else if constexpr (kExtras != kNoExtras) {
      int m = m_blk + 1;
      if (ex.has_segments()) {
        while (m < m_hi && !block_meets(m)) ++m;
      }
      const bool last_block = m >= m_hi;
      next_m = last_block ? m_lo : m;
      next_head += last_block;
    } else {
      int key_block;
      if constexpr (kHeavyFirst) {
        asm volatile("mov.u32 %0, %%ctaid.z;\n" : "=r"(key_block));
      } else {
        asm volatile("mov.u32 %0, %%ctaid.x;\n" : "=r"(key_block));
      }
      const bool last_block = m_blk + 1 == m_end;
      next_m = last_block ? first_block(key_block * kBc) : m_blk + 1;
      next_head += last_block;
    }

    // This step's tiles have landed, and every warp is done with the previous step's
    // P, dS and other stage.
    cp_async_wait_all();
    __syncthreads();
    if constexpr (Cfg::kDoubleBuffer) {
      if (step + 1 < num_steps) load_step(next_head, next_m, stage ^ 1);
      cp_async_commit();
    }

    // The element path (extras only): bias, mask or softcap on every tile; segment ids where
    // the tile holds more than one.
    bool element = false;
    if constexpr (kExtras != kNoExtras) {
      ex.head = head;
      element = ex.per_element() ||
                (ex.has_segments() &&
                 !Extras::spans_all_match(ex.row_span(m0, min(m0 + kBr, row_end)), key_span));
    }

    // Element masks only where the tile crosses the band's edge or the end of the keys:
    // one bit per accumulator element, all set otherwise. (A select on these bits after
    // the exponential stays correct for any sign of the scale.)
    constexpr int kElems = kSdPMT * kSdPNT * 4;
    uint32_t visible[(kElems + 31) / 32];
    // The bit of accumulator element x[mt][nt][q].
    auto bit_of = [](int mt, int nt, int q) { return (mt * kSdPNT + nt) * 4 + q; };
    auto compute_mask = [&]() {
#pragma unroll
      for (int w = 0; w < (kElems + 31) / 32; ++w) visible[w] = ~0u;
      const bool need_mask =
          n_start + kBc > key_end ||
          (left_bounded && int64_t{n_start} < int64_t{m0} + kBr - 1 - p.window_left) ||
          (right_bounded && int64_t{n_start} + kBc - 1 > int64_t{m0} + p.window_right);
      if (need_mask) {
        const int lane_now = lane_id();
#pragma unroll
        for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            // Visible keys of row i: [lo, hi] (the window clipped to the keys that exist).
            const int i = m0 + sdp_m0 + mt * 16 + lane_now / 4 + half * 8;
            const int lo = left_bounded ? i - p.window_left : 0;
            const int hi = right_bounded ? min(key_end - 1, i + p.window_right) : key_end - 1;
#pragma unroll
            for (int nt = 0; nt < kSdPNT; ++nt) {
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int j = n_start + sdp_n0 + nt * 8 + 2 * (lane_now % 4) + c;
                const int bit = bit_of(mt, nt, half * 2 + c);
                if (j < lo || j > hi) visible[bit / 32] &= ~(1u << (bit % 32));
              }
            }
          }
        }
      }
    };

    // P = 2^(scale_log2 * S - lse log2 e) in place, masked: scale_log2 = p.scale_log2 for raw
    // scores, log2 e for the element path's natural-unit logits.
    auto exponentiate = [&](float (&x)[kSdPMT][kSdPNT][4], float scale_log2) {
#pragma unroll
      for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const float lse = sLse[stage * kBr + sdp_m0 + mt * 16 + lane_id() / 4 + half * 8];
          // A row that sees nothing has lse = -inf; +inf here makes its P exactly 0.
          const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
#pragma unroll
          for (int nt = 0; nt < kSdPNT; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int bit = bit_of(mt, nt, half * 2 + c);
              float& v = x[mt][nt][half * 2 + c];
              const float e = exp2f(fmaf(v, scale_log2, -lse2));
              v = (visible[bit / 32] >> (bit % 32)) & 1u ? e : 0.f;
            }
          }
        }
      }
    };

    // Shared address of the two values store_scores writes for (mt, nt, half) of `tile`.
    // Each such 4-byte slot of the dS tile belongs to one thread until the mid-step barrier,
    // so the element path parks the softcap derivatives there until dS overwrites them.
    auto score_slot = [&](uint32_t tile, int mt, int nt, int half) {
      const int lane_now = lane_id();
      const int gg = lane_now / 4;
      return tile + (sdp_m0 + gg + mt * 16 + half * 8) * (kBc * 2) + (lane_now % 4) * 4 +
             ((((sdp_n0 >> 3) + nt) ^ gg) << 4);
    };

    // The element path, before dP: every rule of the extras, logits through softcap and bias,
    // P = exp(logit - lse) in place; hidden pairs and rows with lse = -inf give P = 0, so dS
    // below is 0 there too. With softcap, 1 - tanh^2 of each pair waits in its dS slot (half
    // precision: dS is rounded to 16 bits anyway). The window and the keys' end come from
    // compute_mask; then one pass per remaining rule into the same bits, each behind one
    // warp-uniform branch, with the per-row and per-column parts hoisted and every load
    // unconditional (indices clamped into the valid rows and keys; a clamped pair is hidden
    // anyway): per pair, a rule costs a compare and a load.
    auto element_exp = [&](float (&x)[kSdPMT][kSdPNT][4]) {
      if constexpr (kExtras != kNoExtras) {
        const ExtraParams& e = p.extra;
        const int lane_now = lane_id();
        const int row_base = m0 + sdp_m0 + lane_now / 4;             // + mt * 16 + half * 8
        const int col_base = n_start + sdp_n0 + 2 * (lane_now % 4);  // + nt * 8 + c
        auto clamped_row = [&](int i) { return max(min(i, ex.valid_rows - 1), 0); };
        auto clamped_col = [&](int nt, int c) {
          return max(min(col_base + nt * 8 + c, ex.valid_keys - 1), 0);
        };
        auto hide = [&](int mt, int nt, int q, bool hidden) {
          const int bit = bit_of(mt, nt, q);
          if (hidden) visible[bit / 32] &= ~(1u << (bit % 32));
        };
        // f(mt, nt, q, value) for every element, value = arr[b, head, row, col] (clamped).
        auto each_pair = [&](const auto* arr, const int64_t(&stride)[4], auto&& f) {
#pragma unroll
          for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {  // one row pointer per row
              const auto* row =
                  arr + ex.pair_offset(stride, clamped_row(row_base + mt * 16 + half * 8), 0);
#pragma unroll
              for (int nt = 0; nt < kSdPNT; ++nt) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  f(mt, nt, half * 2 + c, row[int64_t(clamped_col(nt, c)) * stride[3]]);
                }
              }
            }
          }
        };
        compute_mask();  // the window and the keys' end (kv_seqlen)
        // Rows past q_seqlen (their lse is -inf as well), then segment ids: the tile's column
        // ids once, one row id per row. Skipped where neither applies (softcap, bias, mask).
        if (ex.has_segments() || m0 + kBr > ex.valid_rows) {
          const int32_t* kv_ids = e.kv_segment_ids + int64_t(ex.b) * ex.s;
          int key_ids[kSdPNT][2] = {};
          if (ex.has_segments()) {
#pragma unroll
            for (int nt = 0; nt < kSdPNT; ++nt) {
#pragma unroll
              for (int c = 0; c < 2; ++c) key_ids[nt][c] = kv_ids[clamped_col(nt, c)];
            }
          }
#pragma unroll
          for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const int i = row_base + mt * 16 + half * 8;
              const bool row_ok = i < ex.valid_rows;
              const int q_id =
                  ex.has_segments() ? e.q_segment_ids[int64_t(ex.b) * ex.t + clamped_row(i)] : 0;
#pragma unroll
              for (int nt = 0; nt < kSdPNT; ++nt) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  hide(mt, nt, half * 2 + c,
                       !row_ok || (ex.has_segments() && key_ids[nt][c] != q_id));
                }
              }
            }
          }
        }
        if (e.mask != nullptr) {
          each_pair(e.mask, e.mask_stride,
                    [&](int mt, int nt, int q, uint8_t m) { hide(mt, nt, q, m == 0); });
        }
        // Logits (kLogits): scale * s, then softcap, then bias, in natural units.
        const bool softcap = kExtras == kLogits && e.softcap != 0.f;
        const bool transforms = kExtras == kLogits && ex.transforms();
        if (transforms) {
          const float k = softcap ? p.scale * ex.inv_softcap : p.scale;
#pragma unroll
          for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
#pragma unroll
              for (int nt = 0; nt < kSdPNT; ++nt) {
                if (softcap) {
                  float d[2];
#pragma unroll
                  for (int c = 0; c < 2; ++c) {
                    float& v = x[mt][nt][half * 2 + c];
                    const float th = tanhf(k * v);
                    v = e.softcap * th;
                    const int bit = bit_of(mt, nt, half * 2 + c);
                    d[c] = (visible[bit / 32] >> (bit % 32)) & 1u ? 1.f - th * th : 1.f;
                  }
                  const __half2 d2 = __floats2half2_rn(d[0], d[1]);
                  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(score_slot(sDS, mt, nt, half)),
                               "r"(*reinterpret_cast<const uint32_t*>(&d2))
                               : "memory");
                } else {
#pragma unroll
                  for (int c = 0; c < 2; ++c) x[mt][nt][half * 2 + c] *= k;
                }
              }
            }
          }
          if (e.bias != nullptr) {
            each_pair(e.bias, e.bias_stride,
                      [&](int mt, int nt, int q, float bias) { x[mt][nt][q] += bias; });
          }
        }
        exponentiate(x, transforms ? kLog2e : p.scale_log2);
      }
    };

    // kLogits, after dS = P * (dP - delta) = d loss / d logit: dbias += dS on the pairs
    // with P > 0 (hidden pairs add nothing), then dS *= 1 - tanh^2 with softcap, the
    // gradient to scale * q.k that dQ and dK take.
    auto logit_grads = [&](const float (&pr)[kSdPMT][kSdPNT][4], float (&ds)[kSdPMT][kSdPNT][4]) {
      if constexpr (kExtras == kLogits) {
        const bool softcap = p.extra.softcap != 0.f;
        const int lane_now = lane_id();
#pragma unroll
        for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int i = m0 + sdp_m0 + mt * 16 + lane_now / 4 + half * 8;
#pragma unroll
            for (int nt = 0; nt < kSdPNT; ++nt) {
              float2 d = make_float2(1.f, 1.f);
              if (softcap) {
                uint32_t bits;
                asm volatile("ld.shared.b32 %0, [%1];\n"
                             : "=r"(bits)
                             : "r"(score_slot(sDS, mt, nt, half))
                             : "memory");
                d = __half22float2(*reinterpret_cast<const __half2*>(&bits));
              }
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                float& g = ds[mt][nt][half * 2 + c];
                if (p.dbias != nullptr && pr[mt][nt][half * 2 + c] != 0.f) {
                  const int j = n_start + sdp_n0 + nt * 8 + 2 * (lane_now % 4) + c;
                  red_add_f32(p.dbias + ex.pair_offset(p.extra.bias_stride, i, j), g);
                }
                g *= c == 0 ? d.x : d.y;
              }
            }
          }
        }
      }
    };

    // P and dS go to smem as [query][key] tiles. Rows are g (mod 8), so the swizzle key is
    // g; offsets are rebuilt at each use rather than kept live across the loop.
    auto store_scores = [&](uint32_t tile, const float (&x)[kSdPMT][kSdPNT][4]) {
      const int lane_now = lane_id();
      const int gg = lane_now / 4;
      const uint32_t row_off = tile + (sdp_m0 + gg) * (kBc * 2) + (lane_now % 4) * 4;
#pragma unroll
      for (int nt = 0; nt < kSdPNT; ++nt) {
        const uint32_t off = row_off + ((((sdp_n0 >> 3) + nt) ^ gg) << 4);
#pragma unroll
        for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const uint32_t v = pack2<Element>(x[mt][nt][2 * half], x[mt][nt][2 * half + 1]);
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(off + (mt * 16 + half * 8) * (kBc * 2)),
                         "r"(v)
                         : "memory");
          }
        }
      }
    };

    float s[kSdPMT][kSdPNT][4];
    float dp[kSdPMT][kSdPNT][4];
    // dS = P * (dP - delta), in place in dp.
    auto grad_scores = [&]() {
#pragma unroll
      for (int mt = 0; mt < kSdPMT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const float delta = sDelta[stage * kBr + sdp_m0 + mt * 16 + lane_id() / 4 + half * 8];
#pragma unroll
          for (int nt = 0; nt < kSdPNT; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              float& x = dp[mt][nt][half * 2 + c];
              x = s[mt][nt][half * 2 + c] * (x - delta);
            }
          }
        }
      }
    };
    if (Cfg::kLateExp && !element) {
      // S = Q K^T and dP = dO V^T back to back, then the exponentials: no branch or smem
      // store separates the SFU work from the dP products.
      compute_mask();
      zero(s);
      warp_gemm<Element, kSdPMT, kSdPNT, kH, false, kH, false, kH>(s, sQ, sdp_m0, sK, sdp_n0);
      zero(dp);
      warp_gemm<Element, kSdPMT, kSdPNT, kH, false, kH, false, kH>(dp, sDO, sdp_m0, sV, sdp_n0);
      exponentiate(s, p.scale_log2);
      store_scores(sP, s);
      grad_scores();
    } else {
      // S = Q K^T, then P in place, stored to smem before dP = dO V^T is computed (the
      // element path always: dP is not live beside its temporaries).
      zero(s);
      warp_gemm<Element, kSdPMT, kSdPNT, kH, false, kH, false, kH>(s, sQ, sdp_m0, sK, sdp_n0);
      if (element) {
        element_exp(s);
      } else {
        compute_mask();
        exponentiate(s, p.scale_log2);
      }
      store_scores(sP, s);
      zero(dp);
      warp_gemm<Element, kSdPMT, kSdPNT, kH, false, kH, false, kH>(dp, sDO, sdp_m0, sV, sdp_n0);
      grad_scores();
      if (element) logit_grads(s, dp);
    }
    store_scores(sDS, dp);
    __syncthreads();

    // dQ = scale * dS K, added into dq_accum; in kQPasses column slices when a whole
    // warp tile of dQ would not fit in registers beside dK and dV. It runs after dK/dV:
    // running it first measured 2-3% slower at hdim 64 and 128 (H100, atomics).
    auto compute_dq = [&]() {
      float* dq_ptr = p.dq_accum + batch * p.dq_batch_stride + head * p.dq_head_stride;
#pragma unroll 1
      for (int pass = 0; pass < Cfg::kQPasses; ++pass) {
        constexpr int kPassNT = kQNT / Cfg::kQPasses;
        const int pass_n0 = q_n0 + pass * kPassNT * 8;
        float dq[kQMT][kPassNT][4];
        zero(dq);
        warp_gemm<Element, kQMT, kPassNT, kBc, false, kBc, true, kH>(dq, sDS, q_m0, sK, pass_n0);
        // Interior blocks (every row and column real) add without per-element checks.
        auto add_dq = [&](auto checked) {
          const int lane_now = lane_id();
#pragma unroll
          for (int mt = 0; mt < kQMT; ++mt) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const int i = m0 + q_m0 + mt * 16 + lane_now / 4 + half * 8;
              const int col = pass_n0 + 2 * (lane_now % 4);
              float* row = dq_ptr + int64_t{checked ? min(i, p.t - 1) : i} * p.dq_row_stride + col;
#pragma unroll
              for (int nt = 0; nt < kPassNT; ++nt) {
                if (checked && !(i < p.t && col + nt * 8 < p.h)) continue;
                const float x = dq[mt][nt][2 * half] * p.scale;
                const float y = dq[mt][nt][2 * half + 1] * p.scale;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                // One vector reduction instead of two (sm90+): halves the atomic operations.
                atomicAdd(reinterpret_cast<float2*>(row + nt * 8), make_float2(x, y));
#else
                atomicAdd(row + nt * 8, x);
                atomicAdd(row + nt * 8 + 1, y);
#endif
              }
            }
          }
        };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if constexpr (Cfg::kBulkDq) {
          // Stage the warp's 32 x 32 tile as the TMA box (rows of 128 bytes, 16-byte chunk
          // c of row r at c ^ (r % 8): the 128-byte swizzle) and add it to dq_accum with one
          // reduction; rows past T and columns past h fall outside the map and are dropped.
          // Store k of a fragment row writes column tile nt = k ^ (g % 4), which puts the 16
          // lanes of each half-warp on 8 distinct chunks: conflict-free 8-byte stores.
          static_assert(Cfg::kQTileM == 32 && kPassNT == 4, "the dQ TMA box is 32 x 32");
          static_assert(Cfg::kQPasses == 1, "the wait below counts one bulk group per step");
          const int lane_now = lane_id();
          const int g = lane_now / 4;
          const int t = lane_now % 4;
          // Two boxes per warp and pass, alternating by step: the one written now was read by
          // the reduction of two steps ago, which the wait below covers without waiting for
          // the last step's (the wait shares its counter with the Q/dO prefetch: a full
          // wait here stalled on the prefetch issued this step, in ptxas's schedule).
          const uint32_t box = ((s_base + Cfg::kSmemDq + 1023) & ~1023u) +
                               ((warp * Cfg::kQPasses + pass) * 2 + (step & 1)) * Cfg::kDqBoxBytes;
          // The lanes' chunk key: chunk (2 nt + t / 2) ^ g with nt = k ^ (g % 4) is 2k ^ key.
          const int key = ((2 * (g & 3)) | (t >> 1)) ^ g;
          if (pass == 0) {
            bulk_wait_read_all_but_newest();
            __syncwarp();
          }
#pragma unroll
          for (int mt = 0; mt < kQMT; ++mt) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const uint32_t row = box + (mt * 16 + half * 8 + g) * 128 + (t & 1) * 8;
#pragma unroll
              for (int k = 0; k < 4; ++k) {
                // dq[mt][k ^ (g % 4)], selected bit by bit (registers take no run-time index).
                float v[2];
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const float lo = g & 1 ? dq[mt][k ^ 1][2 * half + e] : dq[mt][k][2 * half + e];
                  const float hi = g & 1 ? dq[mt][k ^ 3][2 * half + e] : dq[mt][k ^ 2][2 * half + e];
                  v[e] = (g & 2 ? hi : lo) * p.scale;
                }
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(row + (((2 * k) ^ key) << 4)),
                             "f"(v[0]), "f"(v[1])
                             : "memory");
              }
            }
          }
          fence_async_smem();
          __syncwarp();
          const int row0 = m0 + q_m0;
          if (lane_now == 0 && row0 < p.t && pass_n0 < p.h) {
            tma_add_4d(dq_map, box, pass_n0, head, row0, batch);
          }
          bulk_commit();
          continue;
        }
#endif
        if (m0 + kBr <= p.t && p.h == kH) {
          add_dq(std::false_type{});
        } else {
          add_dq(std::true_type{});
        }
      }
    };

    // dV += P^T dO and dK += dS^T Q: A is the transpose of the stored [Br][Bc] tile, B the
    // stored [Br][H] tile read as [K][N].
    warp_gemm<Element, kKVMT, kKVNT, kBr, true, kBc, true, kH>(acc_dv, sP, kv_m0, sDO, kv_n0);
    warp_gemm<Element, kKVMT, kKVNT, kBr, true, kBc, true, kH>(acc_dk, sDS, kv_m0, sQ, kv_n0);

    if constexpr (!Cfg::kDoubleBuffer) {
      // Single stage: the next Q/dO may overwrite this one only now; it loads while dQ runs.
      __syncthreads();
      if (step + 1 < num_steps) load_step(next_head, next_m, 0);
      cp_async_commit();
    }

    compute_dq();
    head = next_head;
    m_blk = next_m;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The staged dQ rows must stay in shared memory until their reductions are done.
  if constexpr (Cfg::kBulkDq) bulk_wait_all();
#endif

  // Epilogue: dK (scaled) and dV, written once in the input dtype.
  const int g = lane_id() / 4;
  const int t = lane_id() % 4;
  Element* dk_ptr = static_cast<Element*>(p.dk) + batch * p.dk_batch_stride +
                    kv_head * p.dk_head_stride;
  Element* dv_ptr = static_cast<Element*>(p.dv) + batch * p.dv_batch_stride +
                    kv_head * p.dv_head_stride;
#pragma unroll
  for (int mt = 0; mt < kKVMT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int j = n_start + kv_m0 + mt * 16 + g + half * 8;
      if (j >= p.s) continue;
#pragma unroll
      for (int nt = 0; nt < kKVNT; ++nt) {
        const int col = kv_n0 + nt * 8 + 2 * t;
        if (col >= p.h) continue;
        *reinterpret_cast<uint32_t*>(dk_ptr + int64_t{j} * p.dk_row_stride + col) =
            pack2<Element>(acc_dk[mt][nt][2 * half] * p.scale,
                           acc_dk[mt][nt][2 * half + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(dv_ptr + int64_t{j} * p.dv_row_stride + col) =
            pack2<Element>(acc_dv[mt][nt][2 * half], acc_dv[mt][nt][2 * half + 1]);
      }
    }
  }
}

}  // namespace jax_flash::sm80::bwd
