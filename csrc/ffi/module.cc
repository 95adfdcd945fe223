// The Python extension jax_flash._jax_flash_ext: hands the FFI handlers to JAX and says
// what this build contains. jax_flash/_cuda.py is its only user.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "dispatch/dispatch.h"
#include "ffi/handlers.h"

namespace nb = nanobind;

namespace {

std::vector<std::string> dtype_names(const std::vector<jax_flash::DType>& dtypes) {
  std::vector<std::string> names;
  for (jax_flash::DType d : dtypes) {
    names.push_back(d == jax_flash::DType::kFloat16 ? "float16" : "bfloat16");
  }
  return names;
}

}  // namespace

NB_MODULE(_jax_flash_ext, m) {
  m.doc() = "jax_flash CUDA kernels as XLA FFI handlers";

  m.def("registrations", [] {
    nb::dict handlers;
    handlers["jax_flash_fwd"] = nb::capsule(reinterpret_cast<void*>(JaxFlashFwd));
    handlers["jax_flash_bwd"] = nb::capsule(reinterpret_cast<void*>(JaxFlashBwd));
    handlers["jax_flash_segment_ranges"] =
        nb::capsule(reinterpret_cast<void*>(JaxFlashSegmentRanges));
    return handlers;
  }, "Custom-call target name -> PyCapsule of its XLA FFI handler (api_version=1).");

  m.def("built_archs", [] { return jax_flash::build_info().archs; },
        "Kernel families compiled in, e.g. [80]; empty when the kernel sources were missing.");
  m.def("built_head_dims", [] { return jax_flash::build_info().head_dims; },
        "Instantiated head dims, ascending; each serves every multiple of 8 up to it.");
  m.def("built_dtypes", [] { return dtype_names(jax_flash::build_info().dtypes); },
        "Names of the input dtypes with kernels, e.g. ['float16', 'bfloat16'].");
  m.def("missing_sources", [] { return std::string(jax_flash::build_info().missing_sources); },
        "Kernel headers that were absent at build time (stubs stand in), or ''.");
}
