// XLA FFI handler symbols of jax_flash, registered with JAX by jax_flash/_cuda.py as the
// CUDA custom-call targets "jax_flash_fwd", "jax_flash_bwd" and "jax_flash_segment_ranges"
// (api_version=1).
// Operands, results and attributes are documented at their bindings in handlers.cc.
#pragma once

#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFlashFwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFlashBwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFlashSegmentRanges);
