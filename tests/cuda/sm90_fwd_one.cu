// One instantiation of the sm90 forward kernel, for reading the compiler's resource report and
// the SASS without building the whole driver (see the header of csrc/sm90/fwd_kernel.cuh):
//   -DSM90_HDIM=64|128|256  -DSM90_BF16=0|1
#include <cutlass/numeric_types.h>

#include "sm90/fwd_launch.cuh"

#ifndef SM90_HDIM
#define SM90_HDIM 128
#endif
#ifndef SM90_BF16
#define SM90_BF16 1
#endif

namespace jax_flash::sm90 {
using OneElement = std::conditional_t<SM90_BF16, cutlass::bfloat16_t, cutlass::half_t>;
template cudaError_t run_fwd<OneElement, SM90_HDIM>(const FwdParams&, cudaStream_t);
}  // namespace jax_flash::sm90
