// Host side of the portable sm80 backward kernel: checks, grid, shared memory, launch.
// Included by one generated translation unit per (dtype, head dim), which explicitly
// instantiates run_bwd<Element, kHeadDim>.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "params.h"
#include "sm80/bwd_kernel.cuh"
#include "sm80/bwd_traits.h"
#include "sm80/launch.h"

namespace jax_flash::sm80 {

namespace bwd {

inline bool aligned(const void* ptr, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

inline bool all_multiple_of(int64_t m, int64_t a, int64_t b, int64_t c) {
  return a % m == 0 && b % m == 0 && c % m == 0;
}

// What the kernel assumes of its arguments; the handler checks shapes before this, so a
// failure here is a caller bug reported as cudaErrorInvalidValue rather than a crash.
template <int kHeadDim>
bool supported(const BwdParams& p) {
  if (p.h <= 0 || p.h > kHeadDim || p.h % 8 != 0 || p.hv != p.h) return false;
  if (p.b < 0 || p.t < 0 || p.s < 0 || p.n_kv <= 0 || p.group <= 0) return false;
  if (int64_t{p.n_kv} * p.group != p.n) return false;
  if (p.window_left < 0 || p.window_right < 0) return false;
  if (p.b > 65535 || p.n_kv > 65535) return false;  // grid z and y
  // cp.async moves 16-byte chunks of 8 elements.
  if (!aligned(p.q, 16) || !aligned(p.k, 16) || !aligned(p.v, 16) || !aligned(p.dout, 16))
    return false;
  if (!all_multiple_of(8, p.q_batch_stride, p.q_row_stride, p.q_head_stride) ||
      !all_multiple_of(8, p.k_batch_stride, p.k_row_stride, p.k_head_stride) ||
      !all_multiple_of(8, p.v_batch_stride, p.v_row_stride, p.v_head_stride) ||
      !all_multiple_of(8, p.do_batch_stride, p.do_row_stride, p.do_head_stride))
    return false;
  // dQ is added two floats at a time; dK and dV are stored two elements at a time.
  if (!aligned(p.dq_accum, 8) || !aligned(p.dk, 4) || !aligned(p.dv, 4)) return false;
  if (!all_multiple_of(2, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride) ||
      !all_multiple_of(2, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride) ||
      !all_multiple_of(2, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride))
    return false;
  return true;
}

}  // namespace bwd

// Launches one tile configuration (the tests and tuning call this with other configs).
template <typename Element, typename Cfg>
cudaError_t launch_bwd(const BwdParams& params, cudaStream_t stream) {
  if (!bwd::supported<Cfg::kHeadDim>(params)) return cudaErrorInvalidValue;
  if (params.b == 0 || params.s == 0) return cudaSuccess;  // no dK/dV rows, no dQ terms
  const dim3 grid((params.s + Cfg::kBlockN - 1) / Cfg::kBlockN, params.n_kv, params.b);
  auto* kernel = &bwd::bwd_kernel<Element, Cfg>;
  if constexpr (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

template <typename Element, int kHeadDim>
cudaError_t run_bwd(const BwdParams& params, cudaStream_t stream) {
  return launch_bwd<Element, typename BwdTraits<kHeadDim>::Config>(params, stream);
}

}  // namespace jax_flash::sm80
