// One instantiation of the sm90 forward kernel, for reading the compiler's resource report and
// the SASS without building the whole driver (see the header of csrc/sm90/fwd_kernel.cuh):
//   -DSM90_HDIM=64|128|256  -DSM90_BF16=0|1  (the library's default tiles)
//   -DSM90_CWG=3  instead: three consumer warpgroups at hdim 64 (192 x 128 tiles, ping-pong,
//                 3 stages; -DSM90_PP=0 without ping-pong, -DSM90_STAGES=4), as the "192x128"
//                 variants of tests/cuda/sm90_fwd_check.cu
//   -DSM90_QREGS    instead: Q in registers for S = Q K^T (the "qr" variants)
#include <cutlass/numeric_types.h>

#include "sm90/fwd_launch.cuh"

#ifndef SM90_HDIM
#define SM90_HDIM 128
#endif
#ifndef SM90_BF16
#define SM90_BF16 1
#endif

#ifndef SM90_PP
#define SM90_PP 1
#endif
#ifndef SM90_STAGES
#define SM90_STAGES 3
#endif

namespace jax_flash::sm90 {
using OneElement = std::conditional_t<SM90_BF16, cutlass::bfloat16_t, cutlass::half_t>;
#if defined(SM90_QREGS)
template cudaError_t launch_fwd<FwdTraits<OneElement, SM90_HDIM, 128, SM90_HDIM == 64 ? 3 : 2, true, 0, -1, 2, true>>(
    const FwdParams&, cudaStream_t, int, bool, int);
#elif defined(SM90_CWG) && SM90_CWG == 3
template cudaError_t launch_fwd<FwdTraits<OneElement, 64, 128, SM90_STAGES, bool(SM90_PP), 0, -1, 3>>(
    const FwdParams&, cudaStream_t, int, bool, int);
#else
template cudaError_t run_fwd<OneElement, SM90_HDIM>(const FwdParams&, cudaStream_t);
#endif
}  // namespace jax_flash::sm90
