// Standalone check and benchmark of the sm90 forward kernel (no JAX, no FFI). sm_90a only.
//
//   sm90_fwd_check check [name]  correctness of the default instantiations and tuning variants
//                                (those whose name contains `name`) against a naive GPU reference
//   sm90_fwd_check quick [name]  the same on the small cases only (for compute-sanitizer)
//   sm90_fwd_check extras [name] the extras cases only (lengths, segments, bias, mask, softcap)
//   sm90_fwd_check bench [name]  TFLOP/s at the BENCHMARKS.md shapes (16k tokens, hidden 2048)
//   sm90_fwd_check maskbench     TFLOP/s over visible pairs with windows, documents, lengths,
//                                softcap and bias (examples/mask_benchmark.py's cases)
//   sm90_fwd_check list          variant names
// Environment: SM90_SETTLE_MS (time each launch after x ms of it back to back), SM90_BENCH_ORDERS
// (bench: the causal tile orders to time), SM90_SECTION / SM90_MASK_CASES / SM90_ISOLATED /
// SM90_PROFILE_CASE (maskbench), SM90_FORCE_DYNAMIC (every launch in the dynamic tile order).
//
// Pass rule (FlashAttention's): max |o - ref| <= 2 max |o_lowp - ref| + 1e-5, where ref is float32
// attention and o_lowp the same attention with the input dtype's roundings (scaled q, scores, P,
// output); lse within 1e-3 (absolute, scaled by max(1, |lse|)); rows that see no key exactly 0
// with lse = -inf; no NaN (outputs are poisoned with NaN first). Every case runs twice and the
// two outputs must agree bit for bit (a difference means a race). Each launch is watched: a
// kernel still running after 20 s is reported as a hang and the program exits.
//
// Build (from the repo root; tests/cuda/sm90_run.sh does this when no binary was carried):
//   nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr \
//     -gencode=arch=compute_90a,code=sm_90a -I csrc -I <cutlass>/include \
//     tests/cuda/sm90_fwd_check.cu -o out/sm90/sm90_fwd_check
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "sm90/fwd_launch.cuh"
#include "chunk_ranges.h"

using namespace jax_flash;

#define CHECK_CUDA(x)                                                                         \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)

// Wait for the device with a deadline: a pipeline bug shows up as a hang, not a wrong number.
void sync_or_die(const char* what) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t e = cudaStreamQuery(0);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) {
      std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
      std::exit(2);
    }
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(20)) {
      std::printf("HANG %s: kernel still running after 20 s\n", what);
      std::fflush(stdout);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// section: the tile order (scheduler.cuh), -1 = the library's choice (tile_order).
// snake: scheduler.cuh's round order (false: straight round robin, for comparison).
using LaunchFn = cudaError_t (*)(const FwdParams&, cudaStream_t, int section, bool snake);
using RunFn = cudaError_t (*)(const FwdParams&, cudaStream_t);
struct Variant {
  std::string name;
  bool bf16;
  int hdim;
  bool is_default;
  LaunchFn launch;    // these tiles, in the given tile order
  RunFn run;          // defaults: the library entry point (checks call it); else null
  bool check_extras;  // also run the extras cases (defaults, and kernels that could replace one)
};

// Sections from kDynamicOrder up: the dynamic tile order (scheduler.cuh) with section
// section - kDynamicOrder - 1 (so kDynamicOrder: the library's section). SM90_FORCE_DYNAMIC=1
// runs every launch in the dynamic order (checks included: they then skip the library entry).
constexpr int kDynamicOrder = 1 << 20;
const bool force_dynamic = std::getenv("SM90_FORCE_DYNAMIC") != nullptr;

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> items;
  for (size_t at = 0, comma; at <= list.size(); at = comma + 1) {
    comma = list.find(',', at);
    if (comma == std::string::npos) comma = list.size();
    if (comma > at) items.push_back(list.substr(at, comma - at));
  }
  return items;
}
// An order's name: "N" section N (0 rows first, -1 the library's), "dN" the same dynamically.
int parse_order(const std::string& item) {
  return item[0] == 'd' ? kDynamicOrder + 1 + std::atoi(item.c_str() + 1) : std::atoi(item.c_str());
}

template <class Traits>
cudaError_t launch_variant(const FwdParams& p, cudaStream_t s, int section, bool snake) {
  if (section >= kDynamicOrder) return sm90::launch_fwd<Traits>(p, s, section - kDynamicOrder - 1, snake, 1);
  return sm90::launch_fwd<Traits>(p, s, section, snake, force_dynamic ? 1 : -1);
}

template <class Traits>
std::string variant_name() {
  char name[80];
  std::snprintf(name, sizeof(name), "%s h%d %dx%d s%d%s%s%s%s",
                std::is_same_v<typename Traits::Element, cutlass::bfloat16_t> ? "bf16" : "fp16",
                Traits::kHeadDim, Traits::kBlockM, Traits::kBlockN, Traits::kStages,
                Traits::kPingPong ? " pp" : "", Traits::kQStages == 2 ? " q2" : "",
                Traits::kStoreO ? " so" : "", Traits::kQInRegs ? " qr" : "");
  return name;
}

template <typename E, int H>
Variant default_variant() {
  using T = typename sm90::FwdDefaultTraits<E, H>::type;
  return Variant{variant_name<T>(), std::is_same_v<E, cutlass::bfloat16_t>, H, true,
                 &launch_variant<T>, &sm90::run_fwd<E, H>, true};
}

template <typename E, int H, int N, int S, bool PP, int QS = 0, int SO = -1, int CWG = 2,
          bool QR = false>
Variant tuning_variant(bool check_extras = false) {
  using T = sm90::FwdTraits<E, H, N, S, PP, QS, SO, CWG, QR>;
  return Variant{variant_name<T>(), std::is_same_v<E, cutlass::bfloat16_t>, H, false,
                 &launch_variant<T>, nullptr, check_extras};
}

std::vector<Variant> all_variants() {
  using bf16 = cutlass::bfloat16_t;
  using fp16 = cutlass::half_t;
  return {
      default_variant<bf16, 64>(), default_variant<bf16, 128>(), default_variant<bf16, 256>(),
      default_variant<fp16, 64>(), default_variant<fp16, 128>(), default_variant<fp16, 256>(),
#ifndef SM90_CHECK_DEFAULTS_ONLY
      // Q from shared memory for S = Q K^T at hdim 128 (the default before session 11), and
      // Q in registers at hdim 64 (128 x 128 tiles; session 11, H100, two rounds: -4..+6%
      // per point, mostly +0-3%; not the default there).
      tuning_variant<bf16, 128, 128, 2, true, 0, -1, 2, false>(),
      tuning_variant<bf16, 64, 128, 3, true, 0, -1, 2, true>(),
      // One Q buffer (the default has two) at hdim 128.
      tuning_variant<bf16, 128, 128, 2, true, 1>(),
      // O stored directly from registers (no "so": the epilogue of session 2).
      tuning_variant<bf16, 128, 128, 2, true, 0, 0>(),
      tuning_variant<bf16, 64, 128, 3, true, 0, 0>(),
      // Three consumer warpgroups at hdim 64 (192-row tiles; issue 4), candidates for the hdim-64
      // default, so every case including the extras ones: round-robin ping-pong with 3 and 4
      // stages, no ping-pong, and fp16. Names contain "192x".
      tuning_variant<bf16, 64, 128, 3, true, 0, -1, 3>(true),
      tuning_variant<bf16, 64, 128, 4, true, 0, -1, 3>(true),
      tuning_variant<bf16, 64, 128, 3, false, 0, -1, 3>(true),
      tuning_variant<fp16, 64, 128, 3, true, 0, -1, 3>(true),
      // Ping-pong at hdim 256 (no staging tile: O from registers); session 2 measured it
      // faster non-causal, slower causal.
      tuning_variant<bf16, 256, 64, 2, true>(),
#endif
  };
}

// ---------------------------------------------------------------------------------------------
// Device helpers: random init, naive reference.

template <typename E>
__device__ float round_to(float x) {
  return float(E(x));
}

__host__ __device__ uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

// Standard normal values (Box-Muller on a counter-based hash).
template <typename E>
__global__ void init_normal(E* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + uint64_t(i));
    const float u1 = (float((r >> 40) & 0xffffff) + 1.f) / 16777217.f;
    const float u2 = float((r >> 8) & 0xffffff) / 16777216.f;
    p[i] = E(sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

template <typename E>
void fill_normal(E* p, int64_t n, uint64_t seed) {
  init_normal<<<1024, 256>>>(p, n, seed);
  CHECK_CUDA(cudaGetLastError());
}

// One block per (query row, head, batch); lowp = the input dtype's roundings.
// Outputs: o [B, T, N, H] float32 contiguous, lse [B, N, T].
template <typename E>
__global__ void reference_kernel(FwdParams p, bool lowp, float* o, float* lse) {
  extern __shared__ float scores[];  // [S], then 32 floats of reduction scratch
  float* scratch = scores + p.s;
  const int i = blockIdx.x, n = blockIdx.y, b = blockIdx.z, kv = n / p.group;
  const E* q = static_cast<const E*>(p.q) + b * p.q_batch_stride + int64_t(i) * p.q_row_stride +
               n * p.q_head_stride;
  const E* k = static_cast<const E*>(p.k) + b * p.k_batch_stride + kv * p.k_head_stride;
  const E* v = static_cast<const E*>(p.v) + b * p.v_batch_stride + kv * p.v_head_stride;
  const Range keys = Window{p.window_left, p.window_right}.keys_of_row(i, p.s);
  // The extras, written out from their definitions (params.h), not through mask.h's Extras.
  const ExtraParams& x = p.extra;
  auto seen = [&](int j) {
    if (j < keys.lo || j >= keys.hi) return false;
    if (x.q_seqlen && i >= x.q_seqlen[b]) return false;
    if (x.kv_seqlen && j >= x.kv_seqlen[b]) return false;
    if (x.q_segment_ids &&
        x.q_segment_ids[int64_t(b) * p.t + i] != x.kv_segment_ids[int64_t(b) * p.s + j]) {
      return false;
    }
    return !x.mask || x.mask[b * x.mask_stride[0] + n * x.mask_stride[1] +
                             i * x.mask_stride[2] + j * x.mask_stride[3]] != 0;
  };

  auto block_reduce = [&](float x, bool is_max) {
    for (int off = 16; off > 0; off /= 2) {
      const float y = __shfl_xor_sync(0xffffffffu, x, off);
      x = is_max ? fmaxf(x, y) : x + y;
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
    __syncthreads();
    x = is_max ? -INFINITY : 0.f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
    return x;
  };

  float m = -INFINITY;
  for (int j = threadIdx.x; j < p.s; j += blockDim.x) {
    float s = -INFINITY;
    if (seen(j)) {
      float acc = 0.f;
      for (int d = 0; d < p.h; ++d) {
        const float qd = lowp ? round_to<E>(float(q[d]) * p.scale) : float(q[d]);
        acc += qd * float(k[int64_t(j) * p.k_row_stride + d]);
      }
      s = lowp ? round_to<E>(acc) : acc * p.scale;
      if (x.softcap != 0.f) s = x.softcap * tanhf(s / x.softcap);
      if (x.bias) {
        s += x.bias[b * x.bias_stride[0] + n * x.bias_stride[1] + i * x.bias_stride[2] +
                    j * x.bias_stride[3]];
      }
    }
    scores[j] = s;
    m = fmaxf(m, s);
  }
  m = block_reduce(m, true);
  float l = 0.f;
  for (int j = threadIdx.x; j < p.s; j += blockDim.x) l += m == -INFINITY ? 0.f : expf(scores[j] - m);
  l = block_reduce(l, false);
  float* orow = o + ((int64_t(b) * p.t + i) * p.n + n) * p.h;
  for (int d = threadIdx.x; d < p.h; d += blockDim.x) {
    float acc = 0.f;
    if (l > 0.f) {
      for (int j = keys.lo; j < keys.hi; ++j) {
        if (scores[j] == -INFINITY) continue;
        float pj = expf(scores[j] - m) / l;
        if (lowp) pj = round_to<E>(pj);
        acc += pj * float(v[int64_t(j) * p.v_row_stride + d]);
      }
    }
    orow[d] = lowp ? round_to<E>(acc) : acc;
  }
  if (threadIdx.x == 0) lse[(int64_t(b) * p.n + n) * p.t + i] = l > 0.f ? m + logf(l) : -INFINITY;
}

// ---------------------------------------------------------------------------------------------
// Correctness.

struct Case {
  const char* name;
  int b, t, s, n, nkv, h;    // h <= 0: the variant's head dim + h
  int left, right;           // -1 = unbounded
  float scale_mult;          // scale = scale_mult / sqrt(h)
  bool packed_qkv;           // q, k, v interleaved in one [B, T, 3, N, H] buffer (t == s, n == nkv)
  int64_t big_batch_stride;  // > 0: q and o use this batch stride (64-bit offsets)
  // Extras (params.h ExtraParams), drawn per case by make_extras():
  int lengths = 0;    // 1: random q/kv lengths per batch row (one row with kv length 0 if b > 1)
  int segments = 0;   // 1: sorted packed documents, 2: random ids in [0, 3), 3: aligned documents
  int bias = 0;       // 1: [B, N, T, S], 2: [1, N, 1, S] broadcast, 3: [B, 1, T, S]
  int mask = 0;       // 1: [B, 1, T, S], about 80% true
  float softcap = 0;  // 0 = off
};

// Host copies of the extras of a case, uploaded into p.extra.
struct HostExtras {
  std::vector<int32_t> q_len, kv_len, q_ids, kv_ids, q_range, kv_range;
  std::vector<float> bias;
  std::vector<uint8_t> mask;
};

// Segment ids of one batch row: mode 1 sorted documents at random cuts, 2 random ids in [0, 3),
// 3 documents of 512 (tile-aligned: whole tiles match).
void fill_ids(int32_t* ids, int len, int mode, uint64_t& rng) {
  auto next = [&]() { return (rng = mix64(rng + 0x9e3779b97f4a7c15ull)); };
  if (mode == 2) {
    for (int k = 0; k < len; ++k) ids[k] = int(next() % 3);
    return;
  }
  int id = 0;
  for (int k = 0; k < len; ++k) {
    if (mode == 3) id = k / 512;
    else if (k > 0 && next() % 97 == 0) ++id;
    ids[k] = id;
  }
}

template <class T>
const T* upload(const std::vector<T>& h, const std::function<void*(int64_t)>& alloc) {
  if (h.empty()) return nullptr;
  void* d = alloc(int64_t(h.size() * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return static_cast<const T*>(d);
}

// Draws the extras a case asks for and points p.extra at device copies.
void make_extras(const Case& c, uint64_t seed, FwdParams& p,
                 const std::function<void*(int64_t)>& alloc) {
  HostExtras hx;
  uint64_t rng = mix64(seed + 12345);
  auto next = [&]() { return (rng = mix64(rng + 0x9e3779b97f4a7c15ull)); };
  ExtraParams& x = p.extra;
  if (c.lengths) {
    for (int bi = 0; bi < c.b; ++bi) {
      hx.q_len.push_back(c.t - int(next() % (c.t / 2 + 1)));
      hx.kv_len.push_back(bi == 1 ? 0 : c.s - int(next() % (c.s / 2 + 1)));
    }
  }
  if (c.segments) {
    hx.q_ids.resize(size_t(c.b) * c.t);
    hx.kv_ids.resize(size_t(c.b) * c.s);
    for (int bi = 0; bi < c.b; ++bi) {
      uint64_t row_rng = rng + bi;
      fill_ids(hx.q_ids.data() + size_t(bi) * c.t, c.t, c.segments, row_rng);
      if (c.segments == 2) row_rng = rng + 1000 + bi;  // random ids: independent key ids
      else row_rng = rng + bi;                          // documents: the same cuts
      fill_ids(hx.kv_ids.data() + size_t(bi) * c.s, c.s, c.segments, row_rng);
    }
    hx.q_range = chunk_ranges(hx.q_ids, c.b, c.t, hx.kv_ids, c.s);
    hx.kv_range = chunk_ranges(hx.kv_ids, c.b, c.s, hx.q_ids, c.t);
    x.q_chunks = (c.t + kSegmentChunk - 1) / kSegmentChunk;
    x.kv_chunks = (c.s + kSegmentChunk - 1) / kSegmentChunk;
  }
  const int64_t ts = int64_t(c.t) * c.s;
  if (c.bias) {
    const int64_t b_dim = c.bias == 2 ? 1 : c.b, n_dim = c.bias == 3 ? 1 : c.n;
    const int64_t t_dim = c.bias == 2 ? 1 : c.t;
    hx.bias.resize(size_t(b_dim * n_dim * t_dim * c.s));
    for (float& v : hx.bias) v = float(int(next() % 4001) - 2000) / 1000.f;  // [-2, 2]
    const int64_t st[4] = {b_dim == 1 ? 0 : n_dim * t_dim * c.s, n_dim == 1 ? 0 : t_dim * c.s,
                           t_dim == 1 ? 0 : c.s, 1};
    std::copy(st, st + 4, x.bias_stride);
  }
  if (c.mask) {
    hx.mask.resize(size_t(c.b * ts));
    for (uint8_t& v : hx.mask) v = next() % 5 != 0;
    const int64_t st[4] = {ts, 0, c.s, 1};
    std::copy(st, st + 4, x.mask_stride);
  }
  x.q_seqlen = upload(hx.q_len, alloc);
  x.kv_seqlen = upload(hx.kv_len, alloc);
  x.q_segment_ids = upload(hx.q_ids, alloc);
  x.kv_segment_ids = upload(hx.kv_ids, alloc);
  x.q_segment_range = upload(hx.q_range, alloc);
  x.kv_segment_range = upload(hx.kv_range, alloc);
  x.bias = upload(hx.bias, alloc);
  x.mask = upload(hx.mask, alloc);
  x.softcap = c.softcap;
  x.per_element = x.bias || x.mask || x.softcap != 0.f;
}

template <typename E>
bool run_case(const Variant& var, const Case& c, uint64_t seed) {
  const int h = c.h > 0 ? c.h : var.hdim + c.h;
  FwdParams p{};
  p.b = c.b; p.t = c.t; p.s = c.s; p.n = c.n; p.n_kv = c.nkv; p.h = p.hv = h;
  p.group = c.n / c.nkv;
  p.scale = c.scale_mult / std::sqrt(float(h));
  p.scale_log2 = p.scale * float(M_LOG2E);
  p.window_left = c.left < 0 ? kUnbounded : c.left;
  p.window_right = c.right < 0 ? kUnbounded : c.right;
  p.is_causal = p.window_right == 0 && p.window_left == kUnbounded;
  p.dtype = var.bf16 ? DType::kBFloat16 : DType::kFloat16;

  std::vector<void*> allocs;
  std::function<void*(int64_t)> alloc = [&](int64_t bytes) {
    void* ptr;
    CHECK_CUDA(cudaMalloc(&ptr, std::max<int64_t>(bytes, 16)));
    allocs.push_back(ptr);
    return ptr;
  };
  const int64_t qrow = int64_t(c.n) * h, kvrow = int64_t(c.nkv) * h;
  if (c.packed_qkv) {
    const int64_t row = 3 * qrow, total = int64_t(c.b) * c.t * row;
    E* base = static_cast<E*>(alloc(total * sizeof(E)));
    fill_normal(base, total, seed);
    p.q = base; p.k = base + qrow; p.v = base + 2 * qrow;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = int64_t(c.t) * row;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = row;
  } else {
    const int64_t qbs = c.big_batch_stride > 0 ? c.big_batch_stride : int64_t(c.t) * qrow;
    E* q = static_cast<E*>(alloc((qbs * (c.b - 1) + int64_t(c.t) * qrow) * sizeof(E)));
    E* k = static_cast<E*>(alloc(int64_t(c.b) * c.s * kvrow * sizeof(E)));
    E* v = static_cast<E*>(alloc(int64_t(c.b) * c.s * kvrow * sizeof(E)));
    for (int bi = 0; bi < c.b; ++bi) fill_normal(q + bi * qbs, int64_t(c.t) * qrow, seed + 17 * bi);
    fill_normal(k, int64_t(c.b) * c.s * kvrow, seed + 1000);
    fill_normal(v, int64_t(c.b) * c.s * kvrow, seed + 2000);
    p.q = q; p.k = k; p.v = v;
    p.q_batch_stride = qbs;
    p.q_row_stride = qrow;
    p.k_batch_stride = p.v_batch_stride = std::max<int64_t>(int64_t(c.s) * kvrow, kvrow);
    p.k_row_stride = p.v_row_stride = kvrow;
  }
  p.q_head_stride = p.k_head_stride = p.v_head_stride = h;
  const int64_t obs = c.big_batch_stride > 0 ? c.big_batch_stride : int64_t(c.t) * qrow;
  const int64_t o_elems = obs * (c.b - 1) + int64_t(c.t) * qrow;
  E* o = static_cast<E*>(alloc(o_elems * sizeof(E)));
  const int64_t rows = int64_t(c.b) * c.n * c.t;
  p.o = o; p.o_batch_stride = obs; p.o_row_stride = qrow; p.o_head_stride = h;
  p.lse = static_cast<float*>(alloc(rows * 4));
  p.tile_counter = static_cast<int*>(alloc(sizeof(int)));  // the dynamic tile order's counter
  make_extras(c, seed, p, alloc);

  // Copy out the valid part of O ([B, T, N, H] rows, skipping the batch-stride gap).
  const int64_t out_elems = rows * h;
  auto fetch = [&](std::vector<E>& h_o, std::vector<float>& h_lse) {
    h_o.resize(out_elems);
    h_lse.resize(rows);
    for (int bi = 0; bi < c.b; ++bi) {
      CHECK_CUDA(cudaMemcpy(h_o.data() + int64_t(bi) * c.t * qrow, o + bi * obs,
                            int64_t(c.t) * qrow * sizeof(E), cudaMemcpyDeviceToHost));
    }
    CHECK_CUDA(cudaMemcpy(h_lse.data(), p.lse, rows * 4, cudaMemcpyDeviceToHost));
  };
  std::vector<E> h_o, h_o2;
  std::vector<float> h_lse, h_lse2;
  for (int run = 0; run < 2; ++run) {
    CHECK_CUDA(cudaMemset(o, 0xff, o_elems * sizeof(E)));  // NaN poison
    CHECK_CUDA(cudaMemset(p.lse, 0xff, rows * 4));
    CHECK_CUDA(var.run && !force_dynamic ? var.run(p, 0) : var.launch(p, 0, -1, true));
    sync_or_die((var.name + " / " + c.name).c_str());
    if (run == 0) fetch(h_o, h_lse); else fetch(h_o2, h_lse2);
  }
  const bool same = std::memcmp(h_o.data(), h_o2.data(), out_elems * sizeof(E)) == 0 &&
                    std::memcmp(h_lse.data(), h_lse2.data(), rows * 4) == 0;

  float* ref = static_cast<float*>(alloc((out_elems * 2 + rows * 2) * 4));
  float *ref_lp = ref + out_elems, *lse_ref = ref_lp + out_elems, *lse_lp = lse_ref + rows;
  const size_t sh = (c.s + 32) * sizeof(float);
  CHECK_CUDA(cudaFuncSetAttribute(reference_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  if (rows > 0) {
    const dim3 grid(c.t, c.n, c.b);
    reference_kernel<E><<<grid, 128, sh>>>(p, false, ref, lse_ref);
    reference_kernel<E><<<grid, 128, sh>>>(p, true, ref_lp, lse_lp);
    CHECK_CUDA(cudaGetLastError());
  }
  sync_or_die("reference");
  std::vector<float> h_ref(out_elems), h_lp(out_elems), h_lse_ref(rows);
  CHECK_CUDA(cudaMemcpy(h_ref.data(), ref, out_elems * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_lp.data(), ref_lp, out_elems * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_lse_ref.data(), lse_ref, rows * 4, cudaMemcpyDeviceToHost));

  double err = 0, err_lp = 0, err_lse = 0;
  int64_t bad = 0, empty_rows = 0;
  for (int64_t r = 0; r < rows; ++r) {  // r indexes [B, N, T]; outputs are [B, T, N, H]
    const int64_t bi = r / (int64_t(c.n) * c.t), ni = (r / c.t) % c.n, ti = r % c.t;
    const int64_t base = ((bi * c.t + ti) * c.n + ni) * h;
    const bool empty = h_lse_ref[r] == -INFINITY;
    empty_rows += empty;
    if (empty ? h_lse[r] != -INFINITY
              : !(std::fabs(h_lse[r] - h_lse_ref[r]) <= 1e-3 * std::max(1.f, std::fabs(h_lse_ref[r])))) {
      ++bad;
    }
    if (!empty) err_lse = std::max(err_lse, double(std::fabs(h_lse[r] - h_lse_ref[r])));
    for (int d = 0; d < h; ++d) {
      const float x = float(h_o[base + d]);
      if (std::isnan(x) || (empty && x != 0.f)) ++bad;
      err = std::max(err, double(std::fabs(x - h_ref[base + d])));
      err_lp = std::max(err_lp, double(std::fabs(h_lp[base + d] - h_ref[base + d])));
    }
  }
  const bool ok = bad == 0 && same && err <= 2 * err_lp + 1e-5;
  std::printf("%-4s %-22s %-28s h=%-3d err %.2e lowp %.2e lse %.1e empty %lld bad %lld%s\n",
              ok ? "PASS" : "FAIL", var.name.c_str(), c.name, h, err, err_lp, err_lse,
              (long long)empty_rows, (long long)bad, same ? "" : " NONDETERMINISTIC");
  std::fflush(stdout);
  for (void* ptr : allocs) CHECK_CUDA(cudaFree(ptr));
  return ok;
}

// A case with extras (Case fields lengths .. softcap).
Case with_extras(Case c, int lengths, int segments, int bias, int mask, float softcap) {
  c.lengths = lengths;
  c.segments = segments;
  c.bias = bias;
  c.mask = mask;
  c.softcap = softcap;
  return c;
}

int run_checks(const std::vector<Variant>& vars, bool quick, bool extras_only) {
  const int U = -1;
  const Case cases[] = {
      {"full 2x256x256 mha", 2, 256, 256, 4, 4, 0, U, U, 1.f, false, 0},
      {"causal 300x300 gqa2", 2, 300, 300, 4, 2, 0, U, 0, 1.f, false, 0},
      {"causal t<s 200x333 mqa", 1, 200, 333, 4, 1, -24, U, 0, 1.f, false, 0},
      {"causal t>s 333x200", 1, 333, 200, 2, 2, -56, U, 0, 1.f, false, 0},
      {"causal t=1 s=500", 2, 1, 500, 3, 1, 0, U, 0, 1.f, false, 0},
      {"window(50,20) 517", 1, 517, 517, 2, 1, 0, 50, 20, 1.f, false, 0},
      {"window(100,-) 600 left only", 1, 600, 600, 2, 2, 0, 100, U, 1.f, false, 0},
      {"window(10,0) empty rows", 1, 300, 100, 2, 2, 0, 10, 0, 1.f, false, 0},
      {"window(0,7) t>s", 2, 400, 129, 2, 1, -8, 0, 7, 1.f, false, 0},
      {"s=1 t=65", 1, 65, 1, 3, 1, 0, U, U, 1.f, false, 0},
      {"s=0 (all empty)", 1, 70, 0, 2, 2, 0, U, U, 1.f, false, 0},
      {"negative scale", 1, 190, 250, 2, 2, 0, U, 0, -1.f, false, 0},
      {"scale 0", 1, 64, 100, 1, 1, 0, U, U, 0.f, false, 0},
      {"large scale 8", 1, 128, 300, 2, 2, 0, U, U, 8.f, false, 0},
      {"packed qkv causal 257", 2, 257, 257, 3, 3, 0, U, 0, 1.f, true, 0},
      {"persistent 8x130x700 gqa4", 8, 130, 700, 20, 5, 0, U, U, 1.f, false, 0},
      {"persistent causal 3x1000 gqa4", 3, 1000, 1000, 16, 4, 0, U, 0, 1.f, false, 0},
      {"long 1x2048 gqa4", 1, 2048, 2048, 8, 2, 0, U, U, 1.f, false, 0},
  };
  // Extras (issue 5), on the default tiles and the variants with check_extras: every feature
  // alone and combined with causal / windows / GQA, odd sizes, rows and batches that see nothing.
  const Case extra_cases[] = {
      with_extras({"lengths 3x300x333", 3, 300, 333, 4, 2, 0, U, U, 1.f, false, 0}, 1, 0, 0, 0, 0),
      with_extras({"lengths causal 3x300", 3, 300, 300, 2, 1, 0, U, 0, 1.f, false, 0}, 1, 0, 0, 0, 0),
      with_extras({"docs+lengths causal 2x700", 2, 700, 700, 4, 2, 0, U, 0, 1.f, false, 0}, 1, 1, 0, 0, 0),
      with_extras({"random ids window(100,30)", 2, 700, 700, 2, 1, 0, 100, 30, 1.f, false, 0}, 1, 2, 0, 0, 0),
      with_extras({"docs t<s 300x500", 2, 300, 500, 2, 2, 0, U, U, 1.f, false, 0}, 0, 1, 0, 0, 0),
      with_extras({"aligned docs causal 4096", 1, 4096, 4096, 2, 1, 0, U, 0, 1.f, false, 0}, 0, 3, 0, 0, 0),
      with_extras({"aligned docs 2048", 1, 2048, 2048, 2, 2, 0, U, U, 1.f, false, 0}, 0, 3, 0, 0, 0),
      with_extras({"bias full 2x200x260", 2, 200, 260, 2, 1, 0, U, U, 1.f, false, 0}, 0, 0, 1, 0, 0),
      with_extras({"bias [1,N,1,S] causal", 2, 300, 300, 4, 2, 0, U, 0, 1.f, false, 0}, 0, 0, 2, 0, 0),
      with_extras({"bias [B,1,T,S] neg scale", 2, 190, 250, 2, 2, 0, U, U, -1.f, false, 0}, 0, 0, 3, 0, 0),
      with_extras({"mask causal 2x333", 2, 333, 333, 2, 1, 0, U, 0, 1.f, false, 0}, 0, 0, 0, 1, 0),
      with_extras({"softcap 5 scale 8", 1, 257, 300, 2, 2, 0, U, U, 8.f, false, 0}, 0, 0, 0, 0, 5.f),
      with_extras({"softcap 30 window(64,16)", 2, 300, 300, 2, 2, 0, 64, 16, 1.f, false, 0}, 0, 0, 0, 0, 30.f),
      with_extras({"everything 2x257x300", 2, 257, 300, 4, 2, 0, 64, 16, -1.f, false, 0}, 1, 2, 2, 1, 20.f),
      with_extras({"everything causal docs", 2, 513, 513, 2, 1, 0, U, 0, 1.f, false, 0}, 1, 1, 3, 1, 10.f),
  };
  int failed = 0, total = 0;
  uint64_t seed = 4321;
  // One case on one variant (quick: small cases only), counted.
  auto check = [&](const Variant& var, const Case& c) {
    if (quick && int64_t(c.b) * c.t * c.n > 4000) return;
    const bool ok = var.bf16 ? run_case<cutlass::bfloat16_t>(var, c, ++seed)
                             : run_case<cutlass::half_t>(var, c, ++seed);
    failed += !ok;
    ++total;
  };
  for (const Variant& var : vars) {
    if (!var.check_extras) continue;
    for (const Case& c : extra_cases) check(var, c);
  }
  for (const Variant& var : vars) {
    if (extras_only) break;
    for (const Case& c : cases) check(var, c);
  }
  // 64-bit offsets: q and o batch strides past 2^31 elements (about 4.3 GB each).
  for (const Variant& var : vars) {
    if (!quick && !extras_only && var.is_default && var.bf16 && var.hdim == 128) {
      check(var, {"batch stride 2^31+8", 2, 100, 150, 1, 1, 0, -1, 0, 1.f, false, (int64_t(1) << 31) + 8});
    }
  }
  std::printf("%d passed, %d failed\n", total - failed, failed);
  return failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// Benchmark: 16k tokens per batch, hidden 2048; median of 5 repeats of 10 launches.

// Median ms per launch over `repeats` timings of `calls` back-to-back launches, after two
// warm-up launches; calls = 1 times each launch alone (synchronized before the next).
double time_ms(const Variant& var, const FwdParams& p, int section, bool snake = true,
               int calls = 10, int repeats = 5) {
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  for (int i = 0; i < 2; ++i) CHECK_CUDA(var.launch(p, 0, section, snake));
  sync_or_die(var.name.c_str());
  // SM90_SETTLE_MS=x: the launch runs back to back in blocks of 10 for x ms first
  // (examples/benchmark.py time_settled), so it is timed at the clock its own load sustains,
  // not at the one the previous case left (identical launches timed one after the other
  // differed by up to 20%, H200, session 8).
  static const double settle_ms = std::getenv("SM90_SETTLE_MS") ? std::atof(std::getenv("SM90_SETTLE_MS")) : 0.0;
  for (auto t0 = std::chrono::steady_clock::now();
       std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() < settle_ms;) {
    for (int i = 0; i < 10; ++i) CHECK_CUDA(var.launch(p, 0, section, snake));
    sync_or_die(var.name.c_str());
  }
  std::vector<float> reps;
  for (int r = 0; r < repeats; ++r) {
    CHECK_CUDA(cudaEventRecord(e0));
    for (int i = 0; i < calls; ++i) CHECK_CUDA(var.launch(p, 0, section, snake));
    CHECK_CUDA(cudaEventRecord(e1));
    sync_or_die(var.name.c_str());
    float ms;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    reps.push_back(ms / calls);
  }
  std::sort(reps.begin(), reps.end());
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  return reps[repeats / 2];
}

int run_bench(const std::vector<Variant>& vars) {
  const int64_t tokens = 16384, hidden = 2048;
  void *q, *k, *v, *o;
  float* lse;
  for (void** ptr : {&q, &k, &v, &o}) CHECK_CUDA(cudaMalloc(ptr, tokens * hidden * 2));
  CHECK_CUDA(cudaMalloc(&lse, tokens * (hidden / 64) * 4));
  int* counter;  // the dynamic tile order's
  CHECK_CUDA(cudaMalloc(&counter, sizeof(int)));
  const int seqlens[] = {512, 1024, 2048, 4096, 8192, 16384};
  std::printf("%-24s %-6s %-6s %-11s %9s %9s\n", "variant", "causal", "seqlen", "order", "ms", "TFLOP/s");
  bool filled_bf16 = false;
  for (const Variant& var : vars) {
    // Random normal inputs of the variant's dtype (bf16 bits are not valid fp16 normals).
    if (var.bf16 != filled_bf16 || &var == &vars.front()) {
      for (void* ptr : {q, k, v}) {
        const uint64_t seed = uint64_t(reinterpret_cast<uintptr_t>(ptr));
        if (var.bf16) fill_normal(static_cast<cutlass::bfloat16_t*>(ptr), tokens * hidden, seed);
        else fill_normal(static_cast<cutlass::half_t*>(ptr), tokens * hidden, seed);
      }
      filled_bf16 = var.bf16;
    }
    for (int causal = 0; causal < 2; ++causal) {
      for (int t : seqlens) {
        const bool full_table = var.is_default && var.bf16;
        if (!var.bf16 && t != 2048 && t != 8192 && t != 16384) continue;
        FwdParams p{};
        p.b = int(tokens / t); p.t = p.s = t; p.h = p.hv = var.hdim;
        p.n = p.n_kv = int(hidden / var.hdim); p.group = 1;
        p.scale = 1.f / std::sqrt(float(var.hdim));
        p.scale_log2 = p.scale * float(M_LOG2E);
        p.window_left = kUnbounded; p.window_right = causal ? 0 : kUnbounded; p.is_causal = causal;
        p.dtype = var.bf16 ? DType::kBFloat16 : DType::kFloat16;
        p.q = q; p.k = k; p.v = v; p.o = o; p.lse = lse;
        p.tile_counter = counter;
        p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = int64_t(t) * hidden;
        p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = hidden;
        p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = var.hdim;
        const double flops = 4.0 * p.b * p.n * double(t) * t * var.hdim / (causal ? 2 : 1);
        // Causal: the library's order, the same with straight round robin (no odd rounds
        // backwards), rows first, and heavy first over every (batch, head) in one section.
        // (-2: the library's section with straight rounds.)
        // SM90_BENCH_ORDERS=a,b,...: these sections instead (dN: dynamic order, section N).
        const int num_bh = p.b * p.n;
        std::vector<int> orders = {-1};
        if (causal && full_table) orders.insert(orders.end(), {-2, 0, num_bh});
        if (const char* list = std::getenv("SM90_BENCH_ORDERS"); list && causal) {
          orders.clear();
          for (const std::string& item : split(list)) orders.push_back(parse_order(item));
        }
        for (int section : orders) {
          const double ms = time_ms(var, p, std::max(section, -1), section != -2);
          char order[32];
          const int sec = section >= kDynamicOrder ? section - kDynamicOrder - 1 : section;
          const char* kind = section >= kDynamicOrder ? "dyn" : "heavy";
          if (section == -1) std::snprintf(order, sizeof(order), "default");
          else if (section == -2) std::snprintf(order, sizeof(order), "straight");
          else if (sec == 0) std::snprintf(order, sizeof(order), "%s", section >= kDynamicOrder ? "dyn/rows" : "rows-first");
          else std::snprintf(order, sizeof(order), "%s/%d", kind, std::min(sec, num_bh));
          std::printf("%-24s %-6d %-6d %-11s %9.3f %9.1f\n", var.name.c_str(), causal, t, order,
                      ms, flops / ms * 1e-9);
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}

// Masked work (issue 5): one 16k sequence, 16 heads, every bf16 variant; TFLOP/s count only
// visible pairs, as a fraction of the dense row (causal rows also of dense causal), so a kernel
// that skips masked tiles keeps its dense rate. Same cases as examples/mask_benchmark.py.
int run_mask_bench(const std::vector<Variant>& vars) {
  const int t = 16384, heads = 16;
  for (const Variant& var : vars) {
    if (!var.bf16) continue;
    const int h = var.hdim;
    const int64_t elems = int64_t(t) * heads * h;
    std::vector<void*> allocs;
    std::function<void*(int64_t)> alloc = [&](int64_t bytes) {
      void* ptr;
      CHECK_CUDA(cudaMalloc(&ptr, bytes));
      allocs.push_back(ptr);
      return ptr;
    };
    FwdParams base{};
    base.b = 1; base.t = base.s = t; base.n = base.n_kv = heads; base.group = 1; base.h = base.hv = h;
    base.scale = 1.f / std::sqrt(float(h));
    base.scale_log2 = base.scale * float(M_LOG2E);
    base.window_left = base.window_right = kUnbounded;
    base.dtype = DType::kBFloat16;
    void* qkv[3];
    for (void*& ptr : qkv) {
      ptr = alloc(elems * 2);
      fill_normal(static_cast<cutlass::bfloat16_t*>(ptr), elems, uint64_t(reinterpret_cast<uintptr_t>(ptr)));
    }
    base.q = qkv[0]; base.k = qkv[1]; base.v = qkv[2];
    base.o = alloc(elems * 2);
    base.lse = static_cast<float*>(alloc(int64_t(t) * heads * 4));
    base.tile_counter = static_cast<int*>(alloc(sizeof(int)));
    base.q_batch_stride = base.k_batch_stride = base.v_batch_stride = base.o_batch_stride = elems;
    base.q_row_stride = base.k_row_stride = base.v_row_stride = base.o_row_stride = int64_t(heads) * h;
    base.q_head_stride = base.k_head_stride = base.v_head_stride = base.o_head_stride = h;

    std::vector<int32_t> ids(t), half = {t / 2}, full = {t};
    for (int k = 0; k < t; ++k) ids[k] = k / 2048;
    const auto ranges = chunk_ranges(ids, 1, t, ids, t);  // one array serves both sides
    std::vector<float> bias(t);
    for (int k = 0; k < t; ++k) bias[k] = float(k % 7) * 0.1f;
    const int32_t* d_ids = upload(ids, alloc);
    const int32_t* d_ranges = upload(ranges, alloc);
    const int32_t* d_half = upload(half, alloc);
    const int32_t* d_full = upload(full, alloc);
    const float* d_bias = upload(bias, alloc);

    struct MaskCase {
      const char* name;
      FwdParams p;
      double pairs;  // visible (query, key) pairs per head
      bool causal;
    };
    auto causal = [](FwdParams p) { p.window_right = 0; p.is_causal = true; return p; };
    auto docs = [&](FwdParams p) {
      p.extra.q_segment_ids = p.extra.kv_segment_ids = d_ids;
      p.extra.q_segment_range = p.extra.kv_segment_range = d_ranges;
      p.extra.q_chunks = p.extra.kv_chunks = t / kSegmentChunk;
      return p;
    };
    FwdParams window = causal(base), lengths = base, softcap = base, biased = base;
    FwdParams lengths_full = base;  // the extras kernel on dense work: its own cost
    lengths_full.extra.q_seqlen = lengths_full.extra.kv_seqlen = d_full;
    window.window_left = 1024; window.is_causal = false;
    lengths.extra.q_seqlen = lengths.extra.kv_seqlen = d_half;
    softcap.extra.softcap = 30.f; softcap.extra.per_element = true;
    biased.extra.bias = d_bias; biased.extra.per_element = true;
    const int64_t bias_stride[4] = {0, 0, 0, 1};
    std::copy(bias_stride, bias_stride + 4, biased.extra.bias_stride);
    double window_pairs = 0;
    for (int i = 0; i < t; ++i) window_pairs += std::min(i, 1024) + 1;
    const double tt = double(t) * t, doc = 2048.0;
    // Diagnosis of the window's per-tile cost: every tile walks 9 (16) unmasked key blocks, as
    // many as a window-1024 (document) tile, with no element mask.
    FwdParams keys_1152 = base, keys_2048 = base, window_mqa = window;
    window_mqa.n_kv = 1;  // every head reads head 0's K/V: 8 MB, L2-resident
    window_mqa.group = heads;
    keys_1152.s = 1152;
    keys_2048.s = 2048;
    // The 8 documents as a batch of 8 sequences of 2k: no extras (batch), and the extras kernel
    // with lengths = 2k (batch_len: no segment scan).
    FwdParams batch = base;
    batch.b = 8; batch.t = batch.s = 2048;
    batch.q_batch_stride = batch.k_batch_stride = batch.v_batch_stride = batch.o_batch_stride =
        int64_t(2048) * heads * h;
    std::vector<int32_t> lens8(8, 2048);
    FwdParams batch_len = batch;
    batch_len.extra.q_seqlen = batch_len.extra.kv_seqlen = upload(lens8, alloc);
    const MaskCase cases[] = {
        {"dense", base, tt, false},
        {"dense_causal", causal(base), t * (t + 1.0) / 2, true},
        {"window_1024", window, window_pairs, true},
        {"docs_8x2k", docs(base), 8 * doc * doc, false},
        {"docs_8x2k_c", docs(causal(base)), 8 * doc * (doc + 1) / 2, true},
        {"lengths_half", lengths, tt / 4, false},
        {"lengths_full", lengths_full, tt, false},
        {"softcap", softcap, tt, false},
        {"bias", biased, tt, false},
        {"keys_1152", keys_1152, t * 1152.0, false},
        {"keys_2048", keys_2048, t * 2048.0, false},
        {"window_mqa", window_mqa, window_pairs, true},
        {"batch_8x2k", batch, 8 * doc * doc, false},
        {"batch_len_8x2k", batch_len, 8 * doc * doc, false},
    };
    // SM90_PROFILE_CASE=<case>: launch that case three times, untimed (for ncu), and stop.
    if (const char* only = std::getenv("SM90_PROFILE_CASE")) {
      for (const MaskCase& c : cases) {
        if (std::strcmp(c.name, only) != 0) continue;
        for (int i = 0; i < 3; ++i) CHECK_CUDA(var.launch(c.p, 0, -1, true));
        sync_or_die(var.name.c_str());
        std::printf("profiled %s on %s\n", only, var.name.c_str());
      }
      for (void* ptr : allocs) CHECK_CUDA(cudaFree(ptr));
      continue;
    }
    // SM90_MASK_CASES=a,b,a,...: these cases in this order (repeats allowed: order effects of
    // power and clocks); SM90_ISOLATED=1: each launch timed alone (synchronized), not 10 in a row.
    std::vector<const MaskCase*> order;
    if (const char* list = std::getenv("SM90_MASK_CASES")) {
      for (const std::string& name : split(list)) {
        for (const MaskCase& c : cases) {
          if (name == c.name) order.push_back(&c);
        }
      }
    } else {
      for (const MaskCase& c : cases) order.push_back(&c);
    }
    const bool isolated = std::getenv("SM90_ISOLATED") != nullptr;
    double dense = 0, dense_causal = 0;
    std::printf("%-24s %-14s %9s %9s %7s\n", "variant", "case", "ms", "TFLOP/s", "of dense");
    for (const MaskCase* cp : order) {
      const MaskCase& c = *cp;
      const char* sec = std::getenv("SM90_SECTION");  // tile order: 0 rows first, n heavy
      const int section = sec ? parse_order(sec) : -1;
      const double ms = isolated ? time_ms(var, c.p, section, true, 1, 21) : time_ms(var, c.p, section);
      const double tflops = 4.0 * heads * c.pairs * h / ms * 1e-9;
      if (std::strcmp(c.name, "dense") == 0) dense = tflops;
      if (std::strcmp(c.name, "dense_causal") == 0) dense_causal = tflops;
      std::printf("%-24s %-14s %9.3f %9.1f %7.2f", var.name.c_str(), c.name, ms, tflops, tflops / dense);
      if (c.causal) std::printf("  (%.2f of dense causal)", tflops / dense_causal);
      std::printf("\n");
      std::fflush(stdout);
    }
    for (void* ptr : allocs) CHECK_CUDA(cudaFree(ptr));
  }
  return 0;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs, cc %d.%d)\n", prop.name, prop.multiProcessorCount, prop.major,
              prop.minor);
  std::vector<Variant> vars;
  for (const Variant& v : all_variants()) {  // optional filter: variant name contains argv[2]
    if (argc <= 2 || v.name.find(argv[2]) != std::string::npos) vars.push_back(v);
  }
  if (mode == "list") {
    for (const Variant& v : vars) std::printf("%s\n", v.name.c_str());
    return 0;
  }
  if (prop.major != 9 || prop.minor != 0) {
    std::fprintf(stderr, "sm_90a kernels need a compute capability 9.0 device\n");
    return 2;
  }
  if (mode == "check" || mode == "quick" || mode == "extras") {
    return run_checks(vars, mode == "quick", mode == "extras");
  }
  if (mode == "bench") return run_bench(vars);
  if (mode == "maskbench") return run_mask_bench(vars);
  std::fprintf(stderr, "usage: sm90_fwd_check check|quick|bench|list [variant name part]\n");
  return 2;
}
