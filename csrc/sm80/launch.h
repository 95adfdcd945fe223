// Entry points of the portable sm80 kernels (mma.sync + cp.async; run on sm80 and newer).
// Element is cutlass::half_t or cutlass::bfloat16_t; kHeadDim is the instantiated head
// dim (64, 128, 256): any params.h <= kHeadDim that is a multiple of 8 runs, padded.
// Each returns the first CUDA error of its launches (cudaSuccess otherwise).
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace jax_flash::sm80 {

template <typename Element, int kHeadDim>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream);

template <typename Element, int kHeadDim>
cudaError_t run_bwd(const BwdParams& params, cudaStream_t stream);

}  // namespace jax_flash::sm80
