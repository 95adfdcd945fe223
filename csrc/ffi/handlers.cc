// XLA FFI handlers for the custom-call targets jax_flash_fwd, jax_flash_bwd and
// jax_flash_segment_ranges.
// Thin on purpose: decode buffers and attributes into FwdParams / BwdParams, check them,
// pick the kernel (csrc/dispatch), launch on XLA's stream, report CUDA errors.
//
// Dimension legend: see params.h. Buffers arrive as [L..., T, N, H]: L... are leading
// dims (vmap with vmap_method="broadcast_all" adds them to every operand alike). XLA hands
// the custom call dense row-major buffers, so L... flatten into the batch dim B.
// Python (jax_flash/_cuda.py) validates first with friendlier messages; these checks
// keep a direct ffi_call from ever launching a kernel on inconsistent shapes.
#include "ffi/handlers.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/segment_ranges.h"
#include "dispatch/dispatch.h"
#include "params.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jax_flash {
namespace {

using Dims = ffi::AnyBuffer::Dimensions;
using Shape = std::vector<int64_t>;

std::string to_string(Dims dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

std::string to_string(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::F32: return "float32";
    default: return "dtype #" + std::to_string(static_cast<int>(dtype));
  }
}

ffi::Error invalid(const char* target, const std::string& message) {
  return ffi::Error::InvalidArgument(std::string(target) + ": " + message);
}

ffi::Error cuda_error(const char* target, const char* what, cudaError_t status) {
  return ffi::Error::Internal(std::string(target) + ": " + what + " failed: " +
                              cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                              ")");
}

// `want` is the exact shape a buffer must have, given the leading dims and sizes of q.
ffi::Error expect_shape(const char* target, const char* name, Dims got, const Shape& want) {
  if (got.size() == want.size() && std::equal(want.begin(), want.end(), got.begin())) {
    return ffi::Error::Success();
  }
  return invalid(target, std::string(name) + " has shape " + to_string(got) + ", expected " +
                             to_string(Dims(want.data(), want.size())));
}

ffi::Error expect_dtype(const char* target, const char* name, ffi::DataType got,
                        ffi::DataType want) {
  if (got == want) return ffi::Error::Success();
  return invalid(target, std::string(name) + " has dtype " + to_string(got) + ", expected " +
                             to_string(want));
}

Shape concat(const Shape& lead, std::initializer_list<int64_t> tail) {
  Shape shape = lead;
  shape.insert(shape.end(), tail);
  return shape;
}

// -1 (unbounded) -> kUnbounded; windows past kUnbounded mean the same as no limit.
bool decode_window(int32_t w, int32_t& out) {
  if (w < -1) return false;
  out = (w == -1 || w > kUnbounded) ? kUnbounded : w;
  return true;
}

// Decodes q, k, v and the attributes shared by both directions into `p` and returns the
// leading dims L... in `lead`.
ffi::Error decode_attn(const char* target, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                       const ffi::AnyBuffer& v, float scale, int32_t window_left,
                       int32_t window_right, AttnParams& p, Shape& lead) {
  Dims qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() < 4) {
    return invalid(target, "q must be [..., T, N, H] with rank >= 4, got shape " + to_string(qd));
  }
  const size_t rank = qd.size();
  if (kd.size() != rank || vd.size() != rank) {
    return invalid(target, "q, k, v must have equal ranks, got shapes " + to_string(qd) + ", " +
                               to_string(kd) + ", " + to_string(vd));
  }
  lead.assign(qd.begin(), qd.begin() + (rank - 3));
  for (size_t i = 0; i + 3 < rank; ++i) {
    if (kd[i] != qd[i] || vd[i] != qd[i]) {
      return invalid(target, "q, k, v leading (batch) dims differ: shapes " + to_string(qd) +
                                 ", " + to_string(kd) + ", " + to_string(vd));
    }
  }

  const ffi::DataType dtype = q.element_type();
  if (dtype != ffi::DataType::F16 && dtype != ffi::DataType::BF16) {
    return invalid(target, "q has dtype " + to_string(dtype) + "; the kernels take float16 "
                           "and bfloat16");
  }
  if (auto e = expect_dtype(target, "k", k.element_type(), dtype); e.failure()) return e;
  if (auto e = expect_dtype(target, "v", v.element_type(), dtype); e.failure()) return e;

  int64_t b = 1;
  for (int64_t d : lead) b *= d;
  const int64_t t = qd[rank - 3], n = qd[rank - 2], h = qd[rank - 1];
  const int64_t s = kd[rank - 3], n_kv = kd[rank - 2], hv = vd[rank - 1];
  if (auto e = expect_shape(target, "k", kd, concat(lead, {s, n_kv, h})); e.failure()) return e;
  if (auto e = expect_shape(target, "v", vd, concat(lead, {s, n_kv, hv})); e.failure()) {
    return e;
  }
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (int64_t size : {b, t, s, n, n_kv, h, hv}) {
    if (size <= 0 || size > kMax) {
      return invalid(target, "every size must be in [1, 2^31): q " + to_string(qd) + ", k " +
                                 to_string(kd) + ", v " + to_string(vd));
    }
  }
  if (n % n_kv != 0) {
    return invalid(target, "query heads N=" + std::to_string(n) +
                               " must be a multiple of key/value heads K=" + std::to_string(n_kv));
  }
  if (hv != h) {
    return invalid(target, "the kernels need Hv == H, got H=" + std::to_string(h) +
                               ", Hv=" + std::to_string(hv));
  }
  if (h % 8 != 0) {
    return invalid(target, "head dim H=" + std::to_string(h) + " must be a multiple of 8");
  }
  if (!std::isfinite(scale)) {
    return invalid(target, "scale must be finite, got " + std::to_string(scale));
  }
  if (!decode_window(window_left, p.window_left) || !decode_window(window_right, p.window_right)) {
    return invalid(target, "window_left / window_right must be >= -1 (-1 = unbounded), got " +
                               std::to_string(window_left) + ", " + std::to_string(window_right));
  }

  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.b = static_cast<int32_t>(b);
  p.t = static_cast<int32_t>(t);
  p.s = static_cast<int32_t>(s);
  p.n = static_cast<int32_t>(n);
  p.n_kv = static_cast<int32_t>(n_kv);
  p.h = static_cast<int32_t>(h);
  p.hv = static_cast<int32_t>(hv);
  p.group = static_cast<int32_t>(n / n_kv);
  // Dense row-major strides, in elements.
  p.q_head_stride = h;
  p.q_row_stride = n * h;
  p.q_batch_stride = t * n * h;
  p.k_head_stride = h;
  p.k_row_stride = n_kv * h;
  p.k_batch_stride = s * n_kv * h;
  p.v_head_stride = hv;
  p.v_row_stride = n_kv * hv;
  p.v_batch_stride = s * n_kv * hv;
  p.scale = scale;
  p.scale_log2 = scale * 1.4426950408889634f;  // log2(e)
  p.is_causal = p.window_right == 0 && p.window_left == kUnbounded;
  p.dtype = dtype == ffi::DataType::F16 ? DType::kFloat16 : DType::kBFloat16;
  return ffi::Error::Success();
}

// Bits of the "extras" attribute: which optional inputs follow the fixed operands, in this
// order (jax_flash/_cuda.py builds the same list). Segments are four buffers: the q and kv
// ids and their per-chunk (min id, max id, lo, hi) summaries (params.h).
enum ExtraBit : int32_t { kBias = 1, kMask = 2, kQSeqlen = 4, kKvSeqlen = 8, kSegments = 16 };
constexpr int32_t kAllExtraBits = 31;

// Checks a [L..., B|1, N|1, T|1, S|1] bias or mask against q's leading dims L..., B and
// returns its element strides over (flattened b, n, t, s); 0 on broadcast dims.
ffi::Error pairwise_strides(const char* target, const char* name, Dims d, const Shape& lead,
                            const AttnParams& p, int64_t (&stride)[4]) {
  const int64_t full[4] = {lead.back(), p.n, p.t, p.s};
  bool ok = d.size() == lead.size() + 3 &&
            std::equal(lead.begin(), lead.end() - 1, d.begin());
  const size_t off = lead.size() - 1;
  for (int i = 0; ok && i < 4; ++i) ok = d[off + i] == 1 || d[off + i] == full[i];
  // A batch-broadcast bias under extra leading dims (vmap of an ffi_call) has no single
  // batch stride; jax_flash's own vmap rule folds vmap into B before reaching here.
  if (ok && d[off] == 1 && p.b != lead.back()) ok = false;
  if (!ok) {
    return invalid(target, std::string(name) + " has shape " + to_string(d) +
                               ", expected [..., B|1, N|1, T|1, S|1] with B, N, T, S = " +
                               std::to_string(full[0]) + ", " + std::to_string(p.n) + ", " +
                               std::to_string(p.t) + ", " + std::to_string(p.s));
  }
  int64_t step = 1;
  for (int i = 3; i >= 0; --i) {
    stride[i] = d[off + i] == 1 ? 0 : step;
    step *= d[off + i];
  }
  return ffi::Error::Success();
}

// Decodes the optional inputs named by `bits` from `args` (in ExtraBit order) into p.extra.
ffi::Error decode_extras(const char* target, const ffi::RemainingArgs& args, int32_t bits,
                         float softcap, const Shape& lead, AttnParams& p) {
  if (bits < 0 || bits > kAllExtraBits) {
    return invalid(target, "extras must be a bit set in [0, 31], got " + std::to_string(bits));
  }
  if (!(softcap >= 0.f) || !std::isfinite(softcap)) {
    return invalid(target, "softcap must be finite and >= 0 (0 = off), got " +
                               std::to_string(softcap));
  }
  const size_t expected = ((bits & kBias) != 0) + ((bits & kMask) != 0) +
                          ((bits & kQSeqlen) != 0) + ((bits & kKvSeqlen) != 0) +
                          4 * ((bits & kSegments) != 0);
  if (args.size() != expected) {
    return invalid(target, "extras=" + std::to_string(bits) + " names " +
                               std::to_string(expected) + " optional inputs, got " +
                               std::to_string(args.size()));
  }
  ExtraParams& x = p.extra;
  size_t next = 0;
  // The next optional input, checked for dtype and (unless `shape` is empty) shape.
  auto take = [&](const char* name, ffi::DataType dtype, const Shape& shape,
                  ffi::AnyBuffer& out) -> ffi::Error {
    auto buf = args.get<ffi::AnyBuffer>(next++);
    if (!buf.has_value()) return invalid(target, std::string(name) + ": not a buffer");
    out = *buf;
    if (auto e = expect_dtype(target, name, out.element_type(), dtype); e.failure()) return e;
    if (shape.empty()) return ffi::Error::Success();
    return expect_shape(target, name, out.dimensions(), shape);
  };
  ffi::AnyBuffer buf(static_cast<const XLA_FFI_Buffer*>(nullptr));  // set by take()
  // A bias or mask: any shape broadcastable to [B, N, T, S], decoded into its strides.
  auto take_pairwise = [&](const char* name, ffi::DataType dtype,
                           int64_t (&stride)[4]) -> ffi::Error {
    if (auto e = take(name, dtype, {}, buf); e.failure()) return e;
    return pairwise_strides(target, name, buf.dimensions(), lead, p, stride);
  };
  // Lengths, segment ids and their chunk ranges: int32 of an exact shape.
  auto take_s32 = [&](const char* name, const Shape& shape, const int32_t*& data) -> ffi::Error {
    if (auto e = take(name, ffi::DataType::S32, shape, buf); e.failure()) return e;
    data = static_cast<const int32_t*>(buf.untyped_data());
    return ffi::Error::Success();
  };
  if (bits & kBias) {
    if (auto e = take_pairwise("bias", ffi::DataType::F32, x.bias_stride); e.failure()) return e;
    x.bias = static_cast<const float*>(buf.untyped_data());
  }
  if (bits & kMask) {
    if (auto e = take_pairwise("mask", ffi::DataType::PRED, x.mask_stride); e.failure()) return e;
    x.mask = static_cast<const uint8_t*>(buf.untyped_data());
  }
  if (bits & kQSeqlen) {
    if (auto e = take_s32("q_seqlen", lead, x.q_seqlen); e.failure()) return e;
  }
  if (bits & kKvSeqlen) {
    if (auto e = take_s32("kv_seqlen", lead, x.kv_seqlen); e.failure()) return e;
  }
  if (bits & kSegments) {
    x.q_chunks = int32_t(segment_chunks(p.t));
    x.kv_chunks = int32_t(segment_chunks(p.s));
    const std::tuple<const char*, Shape, const int32_t**> segments[] = {
        {"q_segment_ids", concat(lead, {p.t}), &x.q_segment_ids},
        {"kv_segment_ids", concat(lead, {p.s}), &x.kv_segment_ids},
        {"q_segment_range", concat(lead, {x.q_chunks, 4}), &x.q_segment_range},
        {"kv_segment_range", concat(lead, {x.kv_chunks, 4}), &x.kv_segment_range}};
    for (const auto& [name, shape, data] : segments) {
      if (auto e = take_s32(name, shape, *data); e.failure()) return e;
    }
  }
  x.softcap = softcap;
  x.per_element = x.bias != nullptr || x.mask != nullptr || softcap != 0.f;
  return ffi::Error::Success();
}

struct DeviceInfo {
  int cc = 0;  // major * 10 + minor
  int num_sms = 0;
};

// Read once per device: attribute queries are cheap but not free, and handlers run on
// every step. Slot 0 means "not read yet"; two threads racing both store the same value.
ffi::Error device_info(const char* target, int32_t ordinal, DeviceInfo& info) {
  constexpr int kCachedDevices = 64;
  static std::atomic<int64_t> cache[kCachedDevices];
  const bool cached = ordinal >= 0 && ordinal < kCachedDevices;
  if (cached) {
    const int64_t packed = cache[ordinal].load(std::memory_order_relaxed);
    if (packed != 0) {
      info.cc = static_cast<int>(packed >> 32);
      info.num_sms = static_cast<int>(packed & 0xffffffff);
      return ffi::Error::Success();
    }
  }
  int major = 0, minor = 0, sms = 0;
  for (auto [attr, value] : {std::pair{cudaDevAttrComputeCapabilityMajor, &major},
                             std::pair{cudaDevAttrComputeCapabilityMinor, &minor},
                             std::pair{cudaDevAttrMultiProcessorCount, &sms}}) {
    if (cudaError_t st = cudaDeviceGetAttribute(value, attr, ordinal); st != cudaSuccess) {
      return cuda_error(target, "reading the device's attributes", st);
    }
  }
  info.cc = major * 10 + minor;
  info.num_sms = sms;
  if (cached) {
    cache[ordinal].store((static_cast<int64_t>(info.cc) << 32) | info.num_sms,
                         std::memory_order_relaxed);
  }
  return ffi::Error::Success();
}

// Checks that this build has a kernel for the device, force_arch, dtype and head dim.
ffi::Error check_kernel(const char* target, const DeviceInfo& info, int32_t force_arch,
                        const AttnParams& p) {
  if (force_arch != 0 && force_arch != 80 && force_arch != 90) {
    return invalid(target, "force_arch must be 0, 80 or 90, got " + std::to_string(force_arch));
  }
  const BuildInfo build = build_info();
  const int arch = select_arch(info.cc, force_arch);
  if (arch == 0) {
    std::string built;
    for (int a : build.archs) built += (built.empty() ? "sm" : ", sm") + std::to_string(a);
    return invalid(target, "no kernel for compute capability " + std::to_string(info.cc / 10) +
                               "." + std::to_string(info.cc % 10) +
                               " with force_arch=" + std::to_string(force_arch) +
                               " (this build has: " + (built.empty() ? "no kernels" : built) +
                               ")");
  }
  if (kernel_head_dim(arch, p.dtype, p.h) == 0) {
    std::string built;
    for (int d : build.head_dims) built += (built.empty() ? "" : ", ") + std::to_string(d);
    return invalid(target, "no sm" + std::to_string(arch) + " kernel for head dim " +
                               std::to_string(p.h) + " in " +
                               (p.dtype == DType::kFloat16 ? "float16" : "bfloat16") +
                               " (built head dims: " + built + ")");
  }
  return ffi::Error::Success();
}

// Reads the device (cached), records its SM count in p and checks there is a kernel for it.
ffi::Error prepare_device(const char* target, int32_t device, int32_t force_arch, AttnParams& p,
                          DeviceInfo& info) {
  if (auto e = device_info(target, device, info); e.failure()) return e;
  p.num_sms = info.num_sms;
  return check_kernel(target, info, force_arch, p);
}

ffi::Error FwdImpl(cudaStream_t stream, int32_t device, ffi::ScratchAllocator scratch,
                   ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::RemainingArgs extra_args,
                   ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   float scale, int32_t window_left, int32_t window_right, float softcap,
                   int32_t extras, int32_t force_arch) {
  constexpr const char* kTarget = "jax_flash_fwd";
  FwdParams p{};
  Shape lead;
  if (auto e = decode_attn(kTarget, q, k, v, scale, window_left, window_right, p, lead);
      e.failure() || (e = decode_extras(kTarget, extra_args, extras, softcap, lead, p)).failure()) {
    return e;
  }
  if (auto e = expect_shape(kTarget, "o", o->dimensions(), concat(lead, {p.t, p.n, p.hv}));
      e.failure()) {
    return e;
  }
  if (auto e = expect_dtype(kTarget, "o", o->element_type(), q.element_type()); e.failure()) {
    return e;
  }
  if (auto e = expect_shape(kTarget, "lse", lse->dimensions(), concat(lead, {p.n, p.t}));
      e.failure()) {
    return e;
  }
  p.o = o->untyped_data();
  p.lse = lse->typed_data();
  p.o_head_stride = p.hv;
  p.o_row_stride = int64_t{p.n} * p.hv;
  p.o_batch_stride = int64_t{p.t} * p.n * p.hv;

  DeviceInfo info;
  if (auto e = prepare_device(kTarget, device, force_arch, p, info); e.failure()) return e;
  // The sm90 kernel's tile counter (FwdParams::tile_counter): its launcher decides whether the
  // call takes the dynamic order, so every forward gets the 4 bytes.
  std::optional<void*> counter = scratch.Allocate(sizeof(int), sizeof(int));
  if (!counter.has_value()) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(kTarget) + ": no 4 bytes of scratch for the tile counter");
  }
  p.tile_counter = static_cast<int*>(*counter);
  if (cudaError_t st = dispatch_fwd(p, info.cc, force_arch, stream); st != cudaSuccess) {
    return cuda_error(kTarget, "the forward kernel", st);
  }
  return ffi::Error::Success();
}

ffi::Error BwdImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                   ffi::AnyBuffer v, ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> lse,
                   ffi::Buffer<ffi::F32> delta, ffi::RemainingArgs extra_args,
                   ffi::Result<ffi::Buffer<ffi::F32>> dq_accum, ffi::Result<ffi::AnyBuffer> dk,
                   ffi::Result<ffi::AnyBuffer> dv, ffi::RemainingRets extra_rets, float scale,
                   int32_t window_left, int32_t window_right, float softcap, int32_t extras,
                   int32_t force_arch) {
  constexpr const char* kTarget = "jax_flash_bwd";
  BwdParams p{};
  Shape lead;
  if (auto e = decode_attn(kTarget, q, k, v, scale, window_left, window_right, p, lead);
      e.failure() || (e = decode_extras(kTarget, extra_args, extras, softcap, lead, p)).failure()) {
    return e;
  }
  // dbias: one float32 result shaped like bias, exactly when there is a bias.
  size_t dbias_bytes = 0;
  if (extra_rets.size() != (p.extra.bias ? 1u : 0u)) {
    return invalid(kTarget, "expected " + std::to_string(p.extra.bias ? 1 : 0) +
                                " dbias result(s), got " + std::to_string(extra_rets.size()));
  }
  if (p.extra.bias) {
    auto dbias = extra_rets.get<ffi::AnyBuffer>(0);
    if (!dbias.has_value()) return invalid(kTarget, "dbias: not a buffer");
    if (auto e = expect_dtype(kTarget, "dbias", (*dbias)->element_type(), ffi::DataType::F32);
        e.failure()) {
      return e;
    }
    auto bias = extra_args.get<ffi::AnyBuffer>(0);  // bias is always the first extra
    if (auto e = expect_shape(kTarget, "dbias", (*dbias)->dimensions(),
                              Shape(bias->dimensions().begin(), bias->dimensions().end()));
        e.failure()) {
      return e;
    }
    p.dbias = static_cast<float*>((*dbias)->untyped_data());
    dbias_bytes = (*dbias)->size_bytes();
  }
  const Shape o_shape = concat(lead, {p.t, p.n, p.hv});
  const Shape row_shape = concat(lead, {p.n, p.t});
  for (auto [name, dtype] : {std::pair{"dout", dout.element_type()},
                             std::pair{"dk", dk->element_type()},
                             std::pair{"dv", dv->element_type()}}) {
    if (auto e = expect_dtype(kTarget, name, dtype, q.element_type()); e.failure()) return e;
  }
  if (auto e = expect_shape(kTarget, "dout", dout.dimensions(), o_shape); e.failure()) return e;
  if (auto e = expect_shape(kTarget, "lse", lse.dimensions(), row_shape); e.failure()) return e;
  if (auto e = expect_shape(kTarget, "delta", delta.dimensions(), row_shape); e.failure()) {
    return e;
  }
  if (auto e = expect_shape(kTarget, "dq_accum", dq_accum->dimensions(),
                            Shape(q.dimensions().begin(), q.dimensions().end()));
      e.failure()) {
    return e;
  }
  if (auto e = expect_shape(kTarget, "dk", dk->dimensions(),
                            Shape(k.dimensions().begin(), k.dimensions().end()));
      e.failure()) {
    return e;
  }
  if (auto e = expect_shape(kTarget, "dv", dv->dimensions(),
                            Shape(v.dimensions().begin(), v.dimensions().end()));
      e.failure()) {
    return e;
  }

  p.dout = dout.untyped_data();
  p.lse = lse.typed_data();
  p.delta = delta.typed_data();
  p.dq_accum = dq_accum->typed_data();
  p.dk = dk->untyped_data();
  p.dv = dv->untyped_data();
  // Gradients share their primal's dense layout.
  p.do_head_stride = p.hv;
  p.do_row_stride = int64_t{p.n} * p.hv;
  p.do_batch_stride = int64_t{p.t} * p.n * p.hv;
  p.dq_head_stride = p.q_head_stride;
  p.dq_row_stride = p.q_row_stride;
  p.dq_batch_stride = p.q_batch_stride;
  p.dk_head_stride = p.k_head_stride;
  p.dk_row_stride = p.k_row_stride;
  p.dk_batch_stride = p.k_batch_stride;
  p.dv_head_stride = p.v_head_stride;
  p.dv_row_stride = p.v_row_stride;
  p.dv_batch_stride = p.v_batch_stride;

  DeviceInfo info;
  if (auto e = prepare_device(kTarget, device, force_arch, p, info); e.failure()) return e;
  // The kernels accumulate dq atomically across key blocks.
  if (cudaError_t st = cudaMemsetAsync(p.dq_accum, 0, dq_accum->size_bytes(), stream);
      st != cudaSuccess) {
    return cuda_error(kTarget, "zeroing dq_accum", st);
  }
  if (dbias_bytes != 0) {
    if (cudaError_t st = cudaMemsetAsync(p.dbias, 0, dbias_bytes, stream); st != cudaSuccess) {
      return cuda_error(kTarget, "zeroing dbias", st);
    }
  }
  if (cudaError_t st = dispatch_bwd(p, info.cc, force_arch, stream); st != cudaSuccess) {
    return cuda_error(kTarget, "the backward kernel", st);
  }
  return ffi::Error::Success();
}

// The segment-range pre-pass (common/segment_ranges.h) of one pair of segment-id arrays.
ffi::Error SegmentRangesImpl(cudaStream_t stream, ffi::ScratchAllocator scratch,
                             ffi::Buffer<ffi::S32> q_ids, ffi::Buffer<ffi::S32> kv_ids,
                             ffi::Result<ffi::Buffer<ffi::S32>> q_range,
                             ffi::Result<ffi::Buffer<ffi::S32>> kv_range) {
  constexpr const char* kTarget = "jax_flash_segment_ranges";
  Dims qd = q_ids.dimensions(), kd = kv_ids.dimensions();
  if (qd.size() == 0 || kd.size() != qd.size() ||
      !std::equal(qd.begin(), qd.end() - 1, kd.begin())) {
    return invalid(kTarget, "q_segment_ids and kv_segment_ids must be [..., T] and [..., S] "
                            "with equal leading dims, got shapes " + to_string(qd) + ", " +
                            to_string(kd));
  }
  const Shape lead(qd.begin(), qd.end() - 1);
  int64_t b = 1;
  for (int64_t d : lead) b *= d;
  const int64_t t = qd.back(), s = kd.back();
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (b > kMax || t > kMax - kSegmentChunk || s > kMax - kSegmentChunk) {
    return invalid(kTarget, "sizes must be below 2^31: " + to_string(qd) + ", " + to_string(kd));
  }
  const int64_t qc = segment_chunks(t), kc = segment_chunks(s);
  if (auto e = expect_shape(kTarget, "q_segment_range", q_range->dimensions(),
                            concat(lead, {qc, 4}));
      e.failure()) {
    return e;
  }
  if (auto e = expect_shape(kTarget, "kv_segment_range", kv_range->dimensions(),
                            concat(lead, {kc, 4}));
      e.failure()) {
    return e;
  }
  SegmentRangeParams p{q_ids.typed_data(), kv_ids.typed_data(), q_range->typed_data(),
                       kv_range->typed_data(), nullptr, b, int32_t(t), int32_t(s)};
  if (const size_t bytes = segment_ranges_scratch_bytes(b, p.t, p.s); bytes > 0) {
    std::optional<void*> buf = scratch.Allocate(bytes, 16);
    if (!buf.has_value()) {
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        std::string(kTarget) + ": no " + std::to_string(bytes) +
                            " bytes of scratch for the envelopes");
    }
    p.scratch = static_cast<int32_t*>(*buf);
  }
  if (cudaError_t st = launch_segment_ranges(p, stream); st != cudaSuccess) {
    return cuda_error(kTarget, "the segment-range kernel", st);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jax_flash

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFlashSegmentRanges, jax_flash::SegmentRangesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // q_segment_ids  [L..., T]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_segment_ids [L..., S]
                                  .Ret<ffi::Buffer<ffi::S32>>()  // q range  [L..., T/16, 4]
                                  .Ret<ffi::Buffer<ffi::S32>>()  // kv range [L..., S/16, 4]
                              );

// Not declared kCmdBufferCompatible: not yet verified under XLA's CUDA graphs.
// Args and results are positional in the FFI API; the comments name them.
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFlashFwd, jax_flash::FwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()               // q   [L..., T, N, H]
                                  .Arg<ffi::AnyBuffer>()               // k   [L..., S, K, H]
                                  .Arg<ffi::AnyBuffer>()               // v   [L..., S, K, Hv]
                                  .RemainingArgs()                     // extras (ExtraBit order)
                                  .Ret<ffi::AnyBuffer>()               // o   [L..., T, N, Hv]
                                  .Ret<ffi::Buffer<ffi::F32>>()        // lse [L..., N, T]
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("window_left")
                                  .Attr<int32_t>("window_right")
                                  .Attr<float>("softcap")
                                  .Attr<int32_t>("extras")
                                  .Attr<int32_t>("force_arch"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFlashBwd, jax_flash::BwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()               // q     [L..., T, N, H]
                                  .Arg<ffi::AnyBuffer>()               // k     [L..., S, K, H]
                                  .Arg<ffi::AnyBuffer>()               // v     [L..., S, K, Hv]
                                  .Arg<ffi::AnyBuffer>()               // dout  [L..., T, N, Hv]
                                  .Arg<ffi::Buffer<ffi::F32>>()        // lse   [L..., N, T]
                                  .Arg<ffi::Buffer<ffi::F32>>()        // delta [L..., N, T]
                                  .RemainingArgs()                     // extras (ExtraBit order)
                                  .Ret<ffi::Buffer<ffi::F32>>()        // dq_accum [L..., T, N, H]
                                  .Ret<ffi::AnyBuffer>()               // dk    [L..., S, K, H]
                                  .Ret<ffi::AnyBuffer>()               // dv    [L..., S, K, Hv]
                                  .RemainingRets()                     // dbias (with a bias)
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("window_left")
                                  .Attr<int32_t>("window_right")
                                  .Attr<float>("softcap")
                                  .Attr<int32_t>("extras")
                                  .Attr<int32_t>("force_arch"));
