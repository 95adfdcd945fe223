// Entry point of the Hopper forward kernel (TMA + wgmma + warp specialization; sm_90a only).
// Element is cutlass::half_t or cutlass::bfloat16_t; kHeadDim is the instantiated head dim
// (64, 128, 256): any params.h head dim <= kHeadDim that is a multiple of 8 runs, padded.
// Returns the first CUDA error of its launches (cudaSuccess otherwise); cudaErrorInvalidValue
// for parameters the kernel cannot take (see fwd_launch.cuh), without launching anything.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace jax_flash::sm90 {

template <typename Element, int kHeadDim>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream);

}  // namespace jax_flash::sm90
