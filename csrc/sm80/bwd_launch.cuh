// Host side of the portable sm80 backward kernel: checks, grid, shared memory, launch.
// Included by one generated translation unit per (dtype, head dim), which explicitly
// instantiates run_bwd<Element, kHeadDim>.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

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

// The kernel a call needs (BwdExtras): bias or softcap change the logits; lengths, segments
// and the mask only hide pairs; nothing extra runs the dense kernel.
inline int extras_mode(const BwdParams& p) {
  const ExtraParams& e = p.extra;
  if (e.bias || e.softcap != 0.f) return kLogits;
  if (e.q_seqlen || e.kv_seqlen || e.q_segment_ids || e.kv_segment_ids || e.mask) return kMasks;
  return kNoExtras;
}

// What the kernel assumes of its arguments; the handler checks shapes before this, so a
// failure here is a caller bug reported as cudaErrorInvalidValue rather than a crash.
template <int kHeadDim>
bool supported(const BwdParams& p) {
  if (p.h <= 0 || p.h > kHeadDim || p.h % 8 != 0 || p.hv != p.h) return false;
  if (p.b < 0 || p.t < 0 || p.s < 0 || p.n_kv <= 0 || p.group <= 0) return false;
  if (int64_t{p.n_kv} * p.group != p.n) return false;
  if (p.window_left < 0 || p.window_right < 0) return false;
  if (p.b > 65535 || p.n_kv > 65535) return false;  // grid z and y (x in heavy-first order)
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
  // The extras as mask.h's extras_consistent, and dbias only with a bias.
  return extras_consistent(p) && (p.dbias == nullptr || p.extra.bias != nullptr);
}

// cuTensorMapEncodeTiled from the driver, found once through the runtime (no libcuda link).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return PFN_cuTensorMapEncodeTiled_v12000{nullptr};
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// dq_accum [B, T, N, H] as a 4-D float32 tensor (H, N, T, B innermost first) in 32 x 32
// boxes (32 columns of one head by 32 rows) with the 128-byte swizzle. False where TMA
// cannot describe it (alignment, strides) or the driver lacks the encoder.
inline bool encode_dq_map(const BwdParams& p, CUtensorMap* map) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || p.t == 0 || !aligned(p.dq_accum, 16) ||
      !all_multiple_of(4, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride)) {
    return false;
  }
  const cuuint64_t dims[4] = {cuuint64_t(p.h), cuuint64_t(p.n), cuuint64_t(p.t), cuuint64_t(p.b)};
  const cuuint64_t strides[3] = {cuuint64_t(p.dq_head_stride) * 4, cuuint64_t(p.dq_row_stride) * 4,
                                 cuuint64_t(p.dq_batch_stride) * 4};
  const cuuint32_t box[4] = {32, 1, 32, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, p.dq_accum, dims, strides, box,
                element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) ==
         CUDA_SUCCESS;
}

// Whether the current device can run Cfg (shared memory per CTA, and sm90 for kBulkDq).
template <typename Cfg>
bool device_fits() {
  int device = 0, major = 0, smem = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    return false;
  }
  return smem >= Cfg::kSmemBytes && (!Cfg::kBulkDq || major >= 9);
}

template <typename Cfg>
int64_t key_blocks(const BwdParams& p) {
  return (int64_t{p.s} + Cfg::kBlockN - 1) / Cfg::kBlockN;
}

// Heavy first at head dims >= 128 where a CTA's work shrinks with its key-block index (a
// right-bounded window with no left bound, e.g. causal: key block 0 sees every query) and
// the key blocks fit in grid z; else key blocks fastest. Kernel alone on an H200 (bf16, 16k
// tokens, hidden 2048; bwd_check order, one run 2026-11-21), TFLOP/s keys fastest -> heavy
// first at seqlen 2k / 4k / 8k / 16k:
//   causal hdim 128   247 / 266 / 279 / 299 -> 256 / 276 / 290 / 298  (+3.4 to +4.1% to 8k)
//   causal hdim 256   190 (4k) / 208 (16k) -> 199 / 208
//   causal hdim 64    235 / 253 / 264 / 276 -> 230 / 243 / 264 / 274  (32 heads of 64: the
//                     heavy-first wave spreads over every head's Q/dO/dQ and loses L2 reuse,
//                     as the sm80 forward measured)
//   non-causal (every CTA alike) hdim 128  282 / 291 / 295 / 297 -> 271 / 289 / 290 / 297,
//                     hdim 64 264 / 271 / 274 / 275 -> 258 / 263 / 262 / 275.
// The heavy-first kernels are compiled only where they are a default (they double a
// config's kernels: the hdim-64 bwd translation unit took 32 s instead of 18 s here).
template <typename Cfg>
inline constexpr bool kHasHeavyFirst = Cfg::kHeadDim >= 128;

template <typename Cfg>
BwdOrder default_bwd_order(const BwdParams& p) {
  const bool shrinking = p.window_right != kUnbounded && p.window_left == kUnbounded;
  return kHasHeavyFirst<Cfg> && shrinking && key_blocks<Cfg>(p) <= 65535
             ? BwdOrder::kHeavyFirst
             : BwdOrder::kKeysFastest;
}

// The kernel a call needs (extras_mode) in CTA order kOrder.
template <typename Element, typename Cfg, BwdOrder kOrder>
auto kernel_for(int mode) {
  return mode == kLogits  ? &bwd_kernel<Element, Cfg, kLogits, kOrder>
         : mode == kMasks ? &bwd_kernel<Element, Cfg, kMasks, kOrder>
                          : &bwd_kernel<Element, Cfg, kNoExtras, kOrder>;
}

// Launches Cfg; dq_map is read only by kBulkDq configs. A call without extras runs the
// kernel compiled without them (the extras kernels hold more registers).
template <typename Element, typename Cfg>
cudaError_t launch(const BwdParams& params, const CUtensorMap& dq_map, BwdOrder order,
                   cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(key_blocks<Cfg>(params));
  const bool heavy_first = order == BwdOrder::kHeavyFirst;
  if (heavy_first && (!kHasHeavyFirst<Cfg> || blocks > 65535)) return cudaErrorInvalidValue;
  const dim3 grid = heavy_first ? dim3(params.b, params.n_kv, blocks)
                                : dim3(blocks, params.n_kv, params.b);
  const int mode = extras_mode(params);
  auto* kernel = kernel_for<Element, Cfg, BwdOrder::kKeysFastest>(mode);
  if constexpr (kHasHeavyFirst<Cfg>) {
    if (heavy_first) kernel = kernel_for<Element, Cfg, BwdOrder::kHeavyFirst>(mode);
  }
  if constexpr (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params, dq_map);
  return cudaGetLastError();
}

}  // namespace bwd

// Launches one tile configuration in `order` (the tests and tuning call this with other
// configs and orders).
template <typename Element, typename Cfg>
cudaError_t launch_bwd(const BwdParams& params, cudaStream_t stream, bwd::BwdOrder order) {
  if (!bwd::supported<Cfg::kHeadDim>(params)) return cudaErrorInvalidValue;
  if (params.b == 0 || params.s == 0) return cudaSuccess;  // no dK/dV rows, no dQ terms
  CUtensorMap dq_map{};
  if constexpr (Cfg::kBulkDq) {
    if (params.t > 0 && !bwd::encode_dq_map(params, &dq_map)) return cudaErrorInvalidValue;
  }
  return bwd::launch<Element, Cfg>(params, dq_map, order, stream);
}

template <typename Element, typename Cfg>
cudaError_t launch_bwd(const BwdParams& params, cudaStream_t stream) {
  return launch_bwd<Element, Cfg>(params, stream, bwd::default_bwd_order<Cfg>(params));
}

// The Hopper config where the device, the driver and dq_accum's layout allow it; the
// portable config otherwise (A100's 163 KB per CTA, strides TMA cannot describe).
template <typename Element, int kHeadDim>
cudaError_t run_bwd(const BwdParams& params, cudaStream_t stream) {
  using Traits = BwdTraits<kHeadDim>;
  if constexpr (!std::is_same_v<typename Traits::Sm90Config, typename Traits::Config>) {
    CUtensorMap dq_map{};
    if (bwd::supported<kHeadDim>(params) && params.b > 0 && params.s > 0 && params.t > 0 &&
        bwd::device_fits<typename Traits::Sm90Config>() && bwd::encode_dq_map(params, &dq_map)) {
      return bwd::launch<Element, typename Traits::Sm90Config>(
          params, dq_map, bwd::default_bwd_order<typename Traits::Sm90Config>(params), stream);
    }
  }
  return launch_bwd<Element, typename Traits::Config>(params, stream);
}

}  // namespace jax_flash::sm80
