// Chooses the kernel for one call: architecture -> dtype -> head dim.
// Host-only interface (no CUTLASS types), shared by the FFI handlers and the module.
// Tile sizes and other heuristics live in each kernel family's traits, not here.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

#include "params.h"

namespace jax_flash {

// Kernel family for a device of compute capability cc (major * 10 + minor) and the
// force_arch attribute (0 = automatic, 80 or 90 = that family). 0 when none can run.
int select_arch(int cc, int force_arch);

// The instantiated head dim that serves head dim h in family `arch`: the smallest built
// one >= h. 0 when this build has none for (arch, dtype).
int kernel_head_dim(int arch, DType dtype, int h);

// Launch the chosen kernel on `stream`. cudaErrorNotSupported when no kernel matches
// (the handlers check first, so that only happens on a bug).
cudaError_t dispatch_fwd(const FwdParams& params, int cc, int force_arch, cudaStream_t stream);
cudaError_t dispatch_bwd(const BwdParams& params, int cc, int force_arch, cudaStream_t stream);

// What this build contains.
struct BuildInfo {
  std::vector<int> archs;      // kernel families with every direction compiled, e.g. {80}
  std::vector<int> head_dims;  // instantiated head dims, ascending
  std::vector<DType> dtypes;
  const char* missing_sources;  // kernel headers that were absent at build time ("" if none)
};
BuildInfo build_info();

}  // namespace jax_flash
