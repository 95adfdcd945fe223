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

// The tile order (scheduler.cuh), chosen from the q-blocks per (batch, head):
//  * rows fastest for non-causal calls without extras, and for causal ones with at most
//    kRowsFirstMaxMBlocks q-blocks (seqlen <= 2k): few q-blocks per head means little imbalance
//    for heavy first to fix, and rows fastest keeps the running CTAs on few heads' K/V in L2;
//  * heavy first over every (batch, head) otherwise, and for every call with extras (lengths
//    leave the last q-blocks of each head empty; rows fastest handed them to the same CTAs:
//    16k with 8k lengths ran at 0.46 of the dense rate, heavy first 0.92).
// Causal, bf16, 16k tokens, H200, one run (two Q buffers, odd rounds backwards), TFLOP/s at
// seqlen 512/1k/2k/4k/8k/16k, rows fastest | heavy first over every pair:
//   hdim 64:  211/283/348/383/409/420 | 200/274/336/383/384/408
//   hdim 128: 261/372/456/508/570/454 | 229/326/419/530/589/576
//   hdim 256: 251/414/522/613/474/584 | 220/330/491/613/737/780
// (Sections of a few heads, kept for measurements, were best in no column of that run.)
inline int tile_section(const AttnParams& p, int64_t num_m_blocks) {
  constexpr int64_t kRowsFirstMaxMBlocks = 16;
  if (!has_extras(p.extra) && (!heavy_first_order(p) || num_m_blocks <= kRowsFirstMaxMBlocks)) {
    return 0;
  }
  return int(std::max<int64_t>(int64_t(p.b) * p.n, 1));
}

// One kernel of a traits (kExtras: has_extras(p.extra), checked by the caller).
// section: the tile order (scheduler.cuh), or -1 for tile_section()'s choice; snake: odd
// rounds backwards (scheduler.cuh; false only for tests/cuda's comparison).
template <class Traits, bool kExtras, bool kDynamic = false>
cudaError_t launch_fwd_kernel(const FwdParams& p, cudaStream_t stream, int section, bool snake) {
  using Element = typename Traits::Element;
  if (p.h <= 0 || p.h % 8 != 0 || p.h > Traits::kHeadDim || p.hv != p.h || p.b < 0 || p.t < 0 ||
      p.s < 0 || p.n <= 0 || p.n_kv <= 0 || p.group <= 0 || p.n != p.n_kv * p.group ||
      p.window_left < 0 || p.window_right < 0 || !extras_consistent(p) ||
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
      section >= 0 ? int(std::min<int64_t>(section, int64_t(p.b) * p.n))
                   : tile_section(p, num_m_blocks),
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

// The kernels of a traits, picked by the call's extras: none, extras, or either in the dynamic
// tile order. dynamic: -1 for common/mask.h dynamic_tile_order()'s choice, else forced (the
// counter FwdParams::tile_counter must then exist). tests/cuda tries tiles and orders with this.
template <class Traits>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream, int section, bool snake = true,
                       int dynamic = -1) {
  const bool dyn = dynamic < 0 ? dynamic_tile_order(p) : dynamic > 0;
  if (!has_extras(p.extra)) {
    return dyn ? launch_fwd_kernel<Traits, false, true>(p, stream, section, snake)
               : launch_fwd_kernel<Traits, false>(p, stream, section, snake);
  }
  return dyn ? launch_fwd_kernel<Traits, true, true>(p, stream, section, snake)
             : launch_fwd_kernel<Traits, true>(p, stream, section, snake);
}

// The library's entry: the default traits, or the wide tiles (fwd_traits.h) where
// use_wide_tiles() picks them; the wide tiles' extras kernel is never instantiated.
template <typename Element, int kHeadDim>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  using Traits = typename FwdDefaultTraits<Element, kHeadDim>::type;
  using Wide = typename FwdWideTraits<Element, kHeadDim>::type;
  if constexpr (!std::is_void_v<Wide>) {
    if (use_wide_tiles(params)) return launch_fwd_kernel<Wide, false>(params, stream, -1, true);
  }
  return launch_fwd<Traits>(params, stream, -1);
}

}  // namespace jax_flash::sm90
