// Host side of the sm90 forward kernel: checks, TMA descriptors, persistent grid, launch.
// Included by one generated translation unit per (dtype, head dim), which instantiates
// run_fwd<Element, kHeadDim>; launch_fwd<Traits> is also used by tests/cuda to try tiles.
// Compile with -gencode=arch=compute_90a,code=sm_90a (wgmma and setmaxnreg need sm_90a).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "params.h"
#include "sm90/fwd_kernel.cuh"
#include "sm90/fwd_traits.h"
#include "sm90/launch.h"
#include "sm90/scheduler.cuh"

namespace jax_flash::sm90 {

// What TMA descriptors require: 16-byte aligned base addresses, strides that are positive
// multiples of 16 bytes and below 2^40 bytes. (CuTe would only assert on these.)
template <typename Element>
inline bool fwd_tma_compatible(const FwdParams& p) {
  constexpr int64_t kVec = 16 / sizeof(Element);
  constexpr int64_t kMaxStride = (int64_t(1) << 40) / sizeof(Element);
  auto ptr_ok = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                             p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                             p.o_batch_stride, p.o_row_stride, p.o_head_stride};
  for (int64_t s : strides) {
    if (s <= 0 || s % kVec != 0 || s >= kMaxStride) return false;
  }
  return ptr_ok(p.q) && ptr_ok(p.k) && ptr_ok(p.v) && ptr_ok(p.o);
}

// S = 0: every row is empty (O = 0, lse = -inf); no K/V tensor exists to describe for TMA.
template <typename Element>
__global__ void fwd_empty_rows_kernel(const __grid_constant__ FwdParams p) {
  const int64_t rows = int64_t(p.b) * p.t * p.n;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    const int head = int(r % p.n), t = int((r / p.n) % p.t), b = int(r / (int64_t(p.n) * p.t));
    Element* o = static_cast<Element*>(p.o) + b * p.o_batch_stride + t * p.o_row_stride +
                 head * p.o_head_stride;
    for (int d = 0; d < p.h; ++d) o[d] = Element(0.f);
    p.lse[(int64_t(b) * p.n + head) * p.t + t] = -INFINITY;
  }
}

// The tile order of a call (scheduler.cuh): a section (0: rows fastest; n: heavy first in
// sections of n (batch, head) pairs) and static rounds or the dynamic order (a global counter).
// Measured on an H200, bf16, 16k tokens, each timing settled (tests/cuda/sm90_fwd_check bench
// with SM90_SETTLE_MS=300: identical launches timed one after the other otherwise differed by
// up to 20%), two rounds, causal TFLOP/s, static heavy first over every pair | rows fastest |
// dynamic heavy first in sections of 4 pairs, session 8:
//   hdim 128, 4k: 474-497 | 543-557 | 537-539    8k: 532-537 | 586-593 | 577-583
//            16k: 569-588 | 473-475 | 614-616
//   hdim 64 (192-row tiles), 4k: 369-377 | 418-424 | 404-411   8k: 437-443 | 421-423 | 442-453
//            16k: 470-473 | 443-456 | 485-486
//   hdim 256, 4k: 546-550 | 579-594 | 548-549    8k: 628-633 | 517-523 | 611-612
//            16k: 656-673 | 604-606 | 654-664
// So, without extras:
//  * rows fastest for non-causal calls and for causal ones with at most kRowsFirstMaxMBlocks
//    q-blocks (seqlen <= 4k at hdim 256, 6k with hdim 64's 192-row tiles, 8k at hdim 128,
//    where rows first led at 8k: 586-593 against 577-583): the running CTAs share few heads'
//    K/V in L2, and the rounds even out the short heads' imbalance;
//  * longer causal rows: heavy first, in sections of kSectionPairs pairs taken dynamically
//    (balance from the counter, L2 reuse from the sections) up to hdim 128, over every pair in
//    static rounds at hdim 256 (its slower tiles balance in fewer rounds);
//  * sliding windows (a left edge): rows fastest, dynamically: tiles of nearly equal work
//    whose first q-blocks per head are lighter. Window 1024 at 16k, hdim 128, static ->
//    dynamic, three rounds, not settled: 458-464 -> 472-473 TFLOP/s (64: 309-310 -> 314-317,
//    256: 454-462 -> 468-480); settled, two rounds: 480-494 both.
// With extras: heavy first over every pair (lengths leave the last q-blocks of each head empty;
// rows fastest handed them to the same CTAs: 16k with 8k lengths ran at 0.46 of the dense rate,
// heavy first 0.92), dynamically for segment ids with a right edge: a q-block's work then peaks
// at each document's end, where static heavy-first rounds expect it at the sequence's (8
// documents of 2k in 16k, causal, hdim 128: 297-298 -> 423-425 TFLOP/s; 64: 210 -> 270; 256:
// 327 -> 399). The dynamic extras kernel is a separate instantiation (more spills).
struct TileOrder {
  int section;
  bool dynamic;
};

template <class Traits>
inline TileOrder tile_order(const AttnParams& p) {
  constexpr int64_t kRowsFirstMaxMBlocks = Traits::kHeadDim == 128 ? 64 : 32;
  constexpr int kSectionPairs = 4;
  const int64_t num_m_blocks = (int64_t(p.t) + Traits::kBlockM - 1) / Traits::kBlockM;
  const int all_pairs = int(std::max<int64_t>(int64_t(p.b) * p.n, 1));
  if (has_extras(p.extra)) {
    return {all_pairs, p.extra.q_segment_ids != nullptr && p.window_right != kUnbounded};
  }
  if (p.window_left != kUnbounded) return {0, true};
  if (!heavy_first_order(p) || num_m_blocks <= kRowsFirstMaxMBlocks) return {0, false};
  if constexpr (Traits::kHeadDim <= 128) return {kSectionPairs, true};
  return {all_pairs, false};
}

// One kernel of a traits (kExtras: has_extras(p.extra), checked by the caller).
// section: the tile order (scheduler.cuh; tile_order()); snake: odd rounds backwards
// (scheduler.cuh; false only for tests/cuda's comparison); kDynamic: the dynamic order.
template <class Traits, bool kExtras, bool kDynamic = false>
cudaError_t launch_fwd_kernel(const FwdParams& p, cudaStream_t stream, int section, bool snake) {
  using Element = typename Traits::Element;
  if (p.h <= 0 || p.h % 8 != 0 || p.h > Traits::kHeadDim || p.hv != p.h || p.b < 0 || p.t < 0 ||
      p.s < 0 || p.n <= 0 || p.n_kv <= 0 || p.group <= 0 || p.n != p.n_kv * p.group ||
      p.window_left < 0 || p.window_right < 0 || !extras_consistent(p) || section < 0 ||
      has_extras(p.extra) != kExtras || (kDynamic && p.tile_counter == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.b == 0 || p.t == 0) return cudaSuccess;
  if (p.s == 0) {  // checked before the TMA rules: K and V are never read
    fwd_empty_rows_kernel<Element><<<256, 256, 0, stream>>>(p);
    return cudaGetLastError();
  }
  if (!fwd_tma_compatible<Element>(p)) return cudaErrorInvalidValue;
  const int64_t num_m_blocks = (int64_t(p.t) + Traits::kBlockM - 1) / Traits::kBlockM;
  const int64_t num_tiles = num_m_blocks * p.b * p.n;
  // The tile loop adds gridDim.x to an int: keep clear of overflow.
  if (num_tiles > INT32_MAX - (1 << 16)) return cudaErrorInvalidConfiguration;

  int num_sms = p.num_sms;
  if (num_sms <= 0) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
  }

  using cute::_1;
  using cute::make_shape;
  using cute::make_stride;
  KernelParams<Traits> kp{
      Traits::make_tma_q(static_cast<const Element*>(p.q), make_shape(p.t, p.h, p.n, p.b),
                         make_stride(p.q_row_stride, _1{}, p.q_head_stride, p.q_batch_stride)),
      Traits::make_tma_k(static_cast<const Element*>(p.k), make_shape(p.s, p.h, p.n_kv, p.b),
                         make_stride(p.k_row_stride, _1{}, p.k_head_stride, p.k_batch_stride)),
      Traits::make_tma_vt(static_cast<const Element*>(p.v), make_shape(p.h, p.s, p.n_kv, p.b),
                          make_stride(_1{}, p.v_row_stride, p.v_head_stride, p.v_batch_stride)),
      Traits::make_tma_o(static_cast<Element*>(p.o), make_shape(p.t, p.h, p.n, p.b),
                         make_stride(p.o_row_stride, _1{}, p.o_head_stride, p.o_batch_stride)),
      p,
      int(num_m_blocks),
      int(std::min<int64_t>(section, int64_t(p.b) * p.n)),
      snake};

  auto kernel = &fwd_kernel<Traits, kExtras, kDynamic>;
  constexpr int kSmem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  if constexpr (kDynamic) {  // the dynamic tile order's counter (scheduler.cuh)
    err = cudaMemsetAsync(p.tile_counter, 0, sizeof(int), stream);
    if (err != cudaSuccess) return err;
  }
  const int grid = int(num_tiles < num_sms ? num_tiles : num_sms);
  kernel<<<grid, Traits::kNThreads, kSmem, stream>>>(kp);
  return cudaGetLastError();
}

// The kernels of a traits, picked by the call's extras (none, extras) and tile_order()'s
// order. section / dynamic >= 0 override the order (tests/cuda tries tiles and orders with
// this; a section alone means static rounds); kAnyExtras = false leaves the extras kernels
// out (the wide tiles': fwd_traits.h).
template <class Traits, bool kAnyExtras = true>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream, int section = -1,
                       bool snake = true, int dynamic = -1) {
  TileOrder order = tile_order<Traits>(p);
  if (section >= 0) order = {section, dynamic > 0};
  else if (dynamic >= 0) order.dynamic = dynamic > 0;
  if constexpr (kAnyExtras) {
    if (has_extras(p.extra)) {
      return order.dynamic ? launch_fwd_kernel<Traits, true, true>(p, stream, order.section, snake)
                           : launch_fwd_kernel<Traits, true>(p, stream, order.section, snake);
    }
  }
  return order.dynamic ? launch_fwd_kernel<Traits, false, true>(p, stream, order.section, snake)
                       : launch_fwd_kernel<Traits, false>(p, stream, order.section, snake);
}

// The library's entry: the default traits, or the wide tiles (fwd_traits.h) where
// use_wide_tiles() picks them; the wide tiles' extras kernels are never instantiated.
template <typename Element, int kHeadDim>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  using Traits = typename FwdDefaultTraits<Element, kHeadDim>::type;
  using Wide = typename FwdWideTraits<Element, kHeadDim>::type;
  if constexpr (!std::is_void_v<Wide>) {
    if (use_wide_tiles(params)) return launch_fwd<Wide, false>(params, stream);
  }
  return launch_fwd<Traits>(params, stream);
}

}  // namespace jax_flash::sm90
