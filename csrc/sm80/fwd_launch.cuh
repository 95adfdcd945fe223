// Host side of the sm80 forward kernel: checks, grid, shared-memory limit, launch.
// Included by one generated translation unit per (dtype, head dim), which instantiates
// run_fwd<Element, kHeadDim>; launch_fwd<Traits> is also used by tests/cuda to try tiles.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "params.h"
#include "sm80/fwd_kernel.cuh"
#include "sm80/launch.h"
#include "sm80/traits.h"

namespace jax_flash::sm80 {

// The default CTA order: heaviest-first where the work per q-block grows with the block
// index (a right-bounded window with no left bound, e.g. causal), else q-blocks fastest so
// that CTAs resident together share one head's K/V in L2. Causal TFLOP/s on an H100
// (bf16, heavy-first / rows-first, seqlen 2k and 8k): hdim 128 276/251, 336/309; hdim 256
// 262/239, 325/297; but hdim 64 252/245, 258/283 and in another run 236/265, 263/271: with
// 32 heads of 64 the heavy-first wave reads every head's K/V at once and loses L2 reuse.
inline FwdOrder default_fwd_order(const FwdParams& p, int head_dim) {
  const bool growing = p.window_right != kUnbounded && p.window_left == kUnbounded;
  return growing && head_dim >= 128 ? FwdOrder::kHeavyFirst : FwdOrder::kRowBlocksFastest;
}

// cp.async moves 16 bytes: every base pointer and stride must keep rows 16-byte aligned.
template <typename Element>
inline bool fwd_aligned(const FwdParams& p) {
  constexpr int64_t kVec = 16 / sizeof(Element);
  auto ptr_ok = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                             p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                             p.o_batch_stride, p.o_row_stride, p.o_head_stride};
  for (int64_t s : strides) {
    if (s % kVec != 0) return false;
  }
  return ptr_ok(p.q) && ptr_ok(p.k) && ptr_ok(p.v) && ptr_ok(p.o);
}

// Launches fwd_kernel<Traits, kExtras>; kExtras must equal has_extras(p.extra) (mask.h).
template <class Traits, bool kExtras>
cudaError_t launch_fwd_kernel(const FwdParams& p, cudaStream_t stream, FwdOrder order) {
  using Element = typename Traits::Element;
  if (p.h <= 0 || p.h % 8 != 0 || p.h > Traits::kHeadDim || p.hv != p.h || p.b < 0 || p.t < 0 ||
      p.s < 0 || p.n <= 0 || p.n_kv <= 0 || p.group <= 0 || p.n != p.n_kv * p.group ||
      p.window_left < 0 || p.window_right < 0 || !fwd_aligned<Element>(p) ||
      !extras_consistent(p) || has_extras(p.extra) != kExtras) {
    return cudaErrorInvalidValue;
  }
  const int64_t num_m_blocks = (int64_t(p.t) + Traits::kBlockM - 1) / Traits::kBlockM;
  const int64_t num_ctas = num_m_blocks * p.b * p.n;
  if (num_ctas == 0) return cudaSuccess;
  if (num_ctas > INT32_MAX) return cudaErrorInvalidConfiguration;

  auto kernel = &fwd_kernel<Traits, kExtras>;
  constexpr int kSmem = Traits::kSmemBytes;
  if (kSmem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<unsigned(num_ctas), Traits::kNThreads, kSmem, stream>>>(p, int(num_m_blocks), order);
  return cudaGetLastError();
}

// Both instantiations of one tile shape (tests/cuda/fwd_check.cu tries tiles with it).
template <class Traits>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream, FwdOrder order) {
  return has_extras(p.extra) ? launch_fwd_kernel<Traits, true>(p, stream, order)
                       : launch_fwd_kernel<Traits, false>(p, stream, order);
}

// Shared memory of the current device (cached by the runtime: no sync): the opt-in limit per
// block, and what kCtas blocks of `bytes` each need of a multiprocessor's (the runtime
// reserves some per block).
inline cudaError_t device_smem_fits(int bytes, int ctas, bool* fits) {
  int device = 0, per_block = 0, per_sm = 0, reserved = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  }
  *fits = per_block >= bytes && int64_t(per_sm) >= int64_t(ctas) * (bytes + reserved);
  return err;
}

// Traits where the device holds kCtas of its blocks per multiprocessor, else Fallback.
template <class Traits, class Fallback, int kCtas, bool kExtras>
cudaError_t launch_fitting(const FwdParams& p, cudaStream_t stream, FwdOrder order) {
  if constexpr (!std::is_same_v<Traits, Fallback>) {
    bool fits = false;
    const cudaError_t err = device_smem_fits(Traits::kSmemBytes, kCtas, &fits);
    if (err != cudaSuccess) return err;
    if (!fits) return launch_fwd_kernel<Fallback, kExtras>(p, stream, order);
  }
  return launch_fwd_kernel<Traits, kExtras>(p, stream, order);
}

template <typename Element, int kHeadDim>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  using D = FwdDefaultTraits<Element, kHeadDim>;
  const FwdOrder order = default_fwd_order(params, kHeadDim);
  if (has_extras(params.extra)) {
    return launch_fitting<typename D::extras, typename D::extras_fallback, D::kCtas, true>(
        params, stream, order);
  }
  return launch_fitting<typename D::type, typename D::fallback, D::kCtas, false>(params, stream,
                                                                                 order);
}

}  // namespace jax_flash::sm80
