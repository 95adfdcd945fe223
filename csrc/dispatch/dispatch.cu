// Architecture -> dtype -> head dim dispatch over the kernels listed in the generated
// build_config.h (one X(...) entry per instantiation compiled into this build).
#include "dispatch/dispatch.h"

#include <cutlass/numeric_types.h>

#include <algorithm>
#include <type_traits>

#include "build_config.h"
#include "sm80/launch.h"
#include "sm90/launch.h"

namespace jax_flash {
namespace {

// Families this build can run in both directions. 90: the sm90 forward with the sm80
// backward (its sm_90 SASS) until an sm90 backward exists.
bool arch_built(int arch) {
  if (arch == 80) return JAX_FLASH_KERNELS_COMPLETE;
  if (arch == 90) return JAX_FLASH_KERNELS_COMPLETE && JAX_FLASH_SM90_BUILT;
  return false;
}

template <typename Element_, int kHeadDim_>
struct Kernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
};

// Calls launch(Kernel<Element, HDIM>{}) for the first (smallest) built head dim >= h of a
// family's X list (ascending per dtype).
#define JAX_FLASH_FIRST_FIT(NAME, LIST)                                     \
  template <typename Element, typename Launch>                             \
  cudaError_t NAME(int h, Launch launch) {                                 \
    LIST(JAX_FLASH_TRY)                                                    \
    return cudaErrorNotSupported;                                          \
  }
#define JAX_FLASH_TRY(ENUM, ELEMENT, HDIM)                                \
  if constexpr (std::is_same_v<ELEMENT, Element>) {                       \
    if (h <= HDIM) return launch(Kernel<ELEMENT, HDIM>{});                \
  }
JAX_FLASH_FIRST_FIT(sm80_first_fit, JAX_FLASH_SM80_KERNELS)
JAX_FLASH_FIRST_FIT(sm90_first_fit, JAX_FLASH_SM90_FWD_KERNELS)
#undef JAX_FLASH_TRY
#undef JAX_FLASH_FIRST_FIT

template <typename Element>
cudaError_t sm80_fwd(const FwdParams& params, cudaStream_t stream) {
  return sm80_first_fit<Element>(params.h, [&](auto k) {
    using K = decltype(k);
    return sm80::run_fwd<typename K::Element, K::kHeadDim>(params, stream);
  });
}

template <typename Element>
cudaError_t sm80_bwd(const BwdParams& params, cudaStream_t stream) {
  return sm80_first_fit<Element>(params.h, [&](auto k) {
    using K = decltype(k);
    return sm80::run_bwd<typename K::Element, K::kHeadDim>(params, stream);
  });
}

template <typename Element>
cudaError_t sm90_fwd(const FwdParams& params, cudaStream_t stream) {
  return sm90_first_fit<Element>(params.h, [&](auto k) {
    using K = decltype(k);
    return sm90::run_fwd<typename K::Element, K::kHeadDim>(params, stream);
  });
}

}  // namespace

int select_arch(int cc, int force_arch) {
  switch (force_arch) {
    case 0:  // Hopper (cc 9.0 exactly: sm_90a code) prefers its own forward
      if (cc == 90 && arch_built(90)) return 90;
      return cc >= 80 && arch_built(80) ? 80 : 0;
    case 80:
      return cc >= 80 && arch_built(80) ? 80 : 0;
    case 90:  // wgmma/TMA code for sm_90a runs on cc 9.0 only
      return cc == 90 && arch_built(90) ? 90 : 0;
    default:
      return 0;
  }
}

int kernel_head_dim(int arch, DType dtype, int h) {
  if (!arch_built(arch)) return 0;
#define JAX_FLASH_TRY(ENUM, ELEMENT, HDIM) \
  if (dtype == DType::ENUM && h <= HDIM) return HDIM;
  if (arch == 80) {
    JAX_FLASH_SM80_KERNELS(JAX_FLASH_TRY)
  }
  if (arch == 90) {  // one JAX_FLASH_HEAD_DIMS setting builds both families
    JAX_FLASH_SM90_FWD_KERNELS(JAX_FLASH_TRY)
  }
#undef JAX_FLASH_TRY
  return 0;
}

cudaError_t dispatch_fwd(const FwdParams& params, int cc, int force_arch, cudaStream_t stream) {
  const int arch = select_arch(cc, force_arch);
  if (arch == 90) {
    switch (params.dtype) {
      case DType::kFloat16: return sm90_fwd<cutlass::half_t>(params, stream);
      case DType::kBFloat16: return sm90_fwd<cutlass::bfloat16_t>(params, stream);
    }
  }
  if (arch == 80) {
    switch (params.dtype) {
      case DType::kFloat16: return sm80_fwd<cutlass::half_t>(params, stream);
      case DType::kBFloat16: return sm80_fwd<cutlass::bfloat16_t>(params, stream);
    }
  }
  return cudaErrorNotSupported;
}

cudaError_t dispatch_bwd(const BwdParams& params, int cc, int force_arch, cudaStream_t stream) {
  const int arch = select_arch(cc, force_arch);
  if (arch == 80 || arch == 90) {  // no sm90 backward yet: the sm80 one runs on Hopper
    switch (params.dtype) {
      case DType::kFloat16: return sm80_bwd<cutlass::half_t>(params, stream);
      case DType::kBFloat16: return sm80_bwd<cutlass::bfloat16_t>(params, stream);
    }
  }
  return cudaErrorNotSupported;
}

BuildInfo build_info() {
  BuildInfo info;
  info.missing_sources = JAX_FLASH_MISSING_SOURCES;
  if (arch_built(80)) info.archs.push_back(80);
  if (arch_built(90)) info.archs.push_back(90);
  auto add = [](auto& list, auto value) {
    if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(value);
  };
#define JAX_FLASH_TRY(ENUM, ELEMENT, HDIM) \
  add(info.head_dims, HDIM);               \
  add(info.dtypes, DType::ENUM);
  JAX_FLASH_SM80_KERNELS(JAX_FLASH_TRY)
#undef JAX_FLASH_TRY
  std::sort(info.head_dims.begin(), info.head_dims.end());
  return info;
}

}  // namespace jax_flash
