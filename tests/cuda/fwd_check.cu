// Standalone check and benchmark of the sm80 forward kernel (no JAX, no FFI).
//
//   fwd_check check [name]  correctness of the default instantiations and tuning variants (those
//                           whose name contains `name`) against a naive GPU float32 reference
//   fwd_check quick [name]  the same on the small cases only (for compute-sanitizer)
//   fwd_check bench [name]  TFLOP/s at the benchmark shapes (16k tokens, hidden 2048, bf16)
//   fwd_check bench_extras [name]  issue 5's points: window and packed documents at 16k, hdim 128
//   fwd_check list          variant names
//
// Pass rule (FlashAttention's): max |o - ref| <= 2 * max |o_naive - ref| + 1e-5, where o_naive
// is the same attention computed naively with the input dtype's roundings (scores, P, output);
// lse within 1e-3 (absolute, scaled by max(1, |lse|)); empty rows exactly 0 and -inf; no NaN
// anywhere (outputs are poisoned with NaN before each run).
//
// Build (from the repo root):
//   nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -gencode arch=compute_80,code=sm_90 \
//     -I csrc -I <cutlass>/include tests/cuda/fwd_check.cu -o out/fwd/fwd_check
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <climits>
#include <vector>

#include "sm80/fwd_launch.cuh"
#include "chunk_ranges.h"

using namespace jax_flash;
using sm80::FwdOrder;
using sm80::FwdTraits;

#define CHECK_CUDA(x)                                                                 \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                   \
    }                                                                                 \
  } while (0)

using LaunchFn = cudaError_t (*)(const FwdParams&, cudaStream_t, FwdOrder);
using RunFn = cudaError_t (*)(const FwdParams&, cudaStream_t);
struct Variant {
  std::string name;
  bool bf16;
  int hdim;
  bool is_default;
  LaunchFn launch;  // these tiles, given order
  RunFn run;        // the library entry point (defaults only; checks call it), else null
};

template <class Traits>
cudaError_t launch_variant(const FwdParams& p, cudaStream_t s, FwdOrder order) {
  return sm80::launch_fwd<Traits>(p, s, order);
}

template <typename E, int H, int M, int N, int W, int S = 1>
Variant make_variant(bool is_default) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s h%d %dx%d w%d%s", std::is_same_v<E, cutlass::bfloat16_t> ? "bf16" : "fp16", H, M, N, W, S == 2 ? " s2" : "");
  return Variant{name, std::is_same_v<E, cutlass::bfloat16_t>, H, is_default,
                 &launch_variant<FwdTraits<E, H, M, N, W, S>>, nullptr};
}

template <typename E, int H>
Variant default_variant() {
  using T = typename sm80::FwdDefaultTraits<E, H>::type;
  Variant v = make_variant<E, H, T::kBlockM, T::kBlockN, T::kNWarps, T::kStages>(true);
  v.run = &sm80::run_fwd<E, H>;
  return v;
}

std::vector<Variant> all_variants() {
  using bf16 = cutlass::bfloat16_t;
  using fp16 = cutlass::half_t;
#ifdef FWD_CHECK_TUNE128  // the default and candidate tiles at hdim 128 only
  return {default_variant<bf16, 128>(), make_variant<bf16, 128, 128, 32, 4>(false),
          make_variant<bf16, 128, 128, 32, 4, 2>(false), make_variant<bf16, 128, 256, 64, 8, 2>(false),
          make_variant<bf16, 128, 128, 64, 4>(false)};
#endif
  return {
      default_variant<fp16, 64>(), default_variant<fp16, 128>(), default_variant<fp16, 256>(),
      default_variant<bf16, 64>(), default_variant<bf16, 128>(), default_variant<bf16, 256>(),
#ifndef FWD_CHECK_DEFAULTS_ONLY
      make_variant<bf16, 64, 128, 128, 4>(false),  make_variant<bf16, 64, 128, 32, 4>(false),
      make_variant<bf16, 128, 128, 64, 4>(false),  make_variant<bf16, 128, 128, 32, 4>(false),
      make_variant<bf16, 256, 128, 32, 8>(false),
      make_variant<bf16, 256, 64, 64, 4>(false),   make_variant<fp16, 256, 64, 64, 4>(false),
#endif
  };
}

// ---------------------------------------------------------------------------------------------
// Device helpers: random init, naive reference.

__device__ float to_float(cutlass::half_t x) { return float(x); }
__device__ float to_float(cutlass::bfloat16_t x) { return float(x); }

template <typename E>
__device__ float round_to(float x) { return float(E(x)); }

__device__ uint64_t mix64(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
  return x;
}

template <typename E>
__global__ void init_normal(E* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
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

// One block per (query row, head, batch). lowp = emulate the input dtype's roundings.
// Outputs: o [B, T, N, H] float32 contiguous, lse [B, N, T].
template <typename E>
__global__ void reference_kernel(FwdParams p, bool lowp, float* o, float* lse) {
  extern __shared__ float sh[];  // scores [S], then reduction scratch [32]
  float* red = sh + p.s;
  const int i = blockIdx.x, n = blockIdx.y, b = blockIdx.z, kvh = n / p.group;
  const E* q = static_cast<const E*>(p.q) + b * p.q_batch_stride + int64_t(i) * p.q_row_stride + n * p.q_head_stride;
  const E* k = static_cast<const E*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const E* v = static_cast<const E*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  const Range keys = Window{p.window_left, p.window_right}.keys_of_row(i, p.s);
  const ExtraParams& x = p.extra;
  const bool row_seen = x.q_seqlen == nullptr || i < x.q_seqlen[b];
  const int kv_len = x.kv_seqlen == nullptr ? p.s : x.kv_seqlen[b];
  auto pair = [&](const int64_t (&st)[4], int j) { return b * st[0] + n * st[1] + i * st[2] + j * st[3]; };
  float m = -INFINITY;
  for (int j = threadIdx.x; j < p.s; j += blockDim.x) {
    float s = -INFINITY;
    bool seen = j >= keys.lo && j < keys.hi && row_seen && j < kv_len;
    if (x.q_segment_ids) seen = seen && x.q_segment_ids[int64_t(b) * p.t + i] == x.kv_segment_ids[int64_t(b) * p.s + j];
    if (x.mask) seen = seen && x.mask[pair(x.mask_stride, j)] != 0;
    if (seen) {
      float acc = 0.f;
      for (int d = 0; d < p.h; ++d) {
        const float qd = lowp ? round_to<E>(to_float(q[d]) * p.scale) : to_float(q[d]);
        acc += qd * to_float(k[int64_t(j) * p.k_row_stride + d]);
      }
      s = lowp ? round_to<E>(acc) : acc * p.scale;
      if (x.softcap != 0.f) s = x.softcap * tanhf(s / x.softcap);
      if (x.bias) s += x.bias[pair(x.bias_stride, j)];
    }
    sh[j] = s;
    m = fmaxf(m, s);
  }
  auto block_reduce = [&](float x, bool is_max) {
    for (int o = 16; o > 0; o /= 2) {
      const float y = __shfl_xor_sync(0xffffffffu, x, o);
      x = is_max ? fmaxf(x, y) : x + y;
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = x;
    __syncthreads();
    x = is_max ? -INFINITY : 0.f;
    for (int w = 0; w < blockDim.x / 32; ++w) x = is_max ? fmaxf(x, red[w]) : x + red[w];
    return x;
  };
  m = block_reduce(m, true);
  float l = 0.f;
  for (int j = threadIdx.x; j < p.s; j += blockDim.x) l += m == -INFINITY ? 0.f : expf(sh[j] - m);
  l = block_reduce(l, false);
  float* orow = o + ((int64_t(b) * p.t + i) * p.n + n) * p.h;
  for (int d = threadIdx.x; d < p.h; d += blockDim.x) {
    float acc = 0.f;
    if (l > 0.f) {
      for (int j = keys.lo; j < keys.hi; ++j) {
        float pj = expf(sh[j] - m) / l;
        if (lowp) pj = round_to<E>(pj);
        acc += pj * to_float(v[int64_t(j) * p.v_row_stride + d]);
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
  int b, t, s, n, nkv, h;  // h = 0: the variant's head dim; h < 0: head dim + h
  int left, right;         // -1 = unbounded
  float scale_mult;        // scale = scale_mult / sqrt(h)
  bool packed_qkv;         // q, k, v interleaved in one [B, T, 3, N, H] buffer (needs t == s, n == nkv)
  int64_t big_batch_stride;  // > 0: q and o use this batch stride (tests 64-bit offsets)
  // Extras (params.h ExtraParams); all off by default.
  bool lengths = false;    // q_seqlen / kv_seqlen per batch row (some 0, some full)
  int segments = 0;        // 0 none; 1 packed documents (sorted ids); 2 interleaved ids (id = j / 7 % 3)
  int bias = 0;            // 0 none; 1 [B, N, T, S]; 2 [1, N, 1, S]; 3 [B, 1, T, S]
  bool mask = false;       // random dense mask [B, 1, T, S], ~80% true
  float softcap = 0.f;     // 0 off
};

// Host-side deterministic generator for the extras.
struct Lcg {
  uint64_t x;
  uint32_t next() { x = x * 6364136223846793005ull + 1442695040888963407ull; return uint32_t(x >> 33); }
};

// Segment ids of one sequence of length len: packed documents of random lengths (sorted ids),
// or ids that interleave so that tiles match only in part.
std::vector<int> segment_ids(int len, int mode, Lcg& rng) {
  std::vector<int> ids(len);
  int id = 0, left = 1 + rng.next() % 97;
  for (int j = 0; j < len; ++j) {
    if (mode == 2) { ids[j] = j / 7 % 3; continue; }
    if (--left == 0) { ++id; left = 1 + rng.next() % 97; }
    ids[j] = id;
  }
  return ids;
}

template <typename E>
bool run_case(const Variant& var, const Case& c, uint64_t seed) {
  const int h = c.h > 0 ? c.h : var.hdim + c.h;
  FwdParams p{};
  p.b = c.b; p.t = c.t; p.s = c.s; p.n = c.n; p.n_kv = c.nkv; p.h = p.hv = h; p.group = c.n / c.nkv;
  p.scale = c.scale_mult / std::sqrt(float(h));
  p.scale_log2 = p.scale * float(M_LOG2E);
  p.window_left = c.left < 0 ? kUnbounded : c.left;
  p.window_right = c.right < 0 ? kUnbounded : c.right;
  p.is_causal = p.window_right == 0 && p.window_left == kUnbounded;
  p.dtype = var.bf16 ? DType::kBFloat16 : DType::kFloat16;

  std::vector<void*> allocs;
  auto alloc = [&](int64_t elems, int64_t elem_size) {
    void* ptr;
    CHECK_CUDA(cudaMalloc(&ptr, elems * elem_size));
    allocs.push_back(ptr);
    return ptr;
  };
  const int64_t qrow = int64_t(c.n) * h, kvrow = int64_t(c.nkv) * h;
  if (c.packed_qkv) {
    const int64_t row = 3 * qrow, total = int64_t(c.b) * c.t * row;
    E* base = static_cast<E*>(alloc(total, sizeof(E)));
    fill_normal(base, total, seed);
    p.q = base; p.k = base + qrow; p.v = base + 2 * qrow;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = int64_t(c.t) * row;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = row;
  } else {
    const int64_t qbs = c.big_batch_stride > 0 ? c.big_batch_stride : int64_t(c.t) * qrow;
    E* q = static_cast<E*>(alloc(qbs * (c.b - 1) + int64_t(c.t) * qrow, sizeof(E)));
    E* k = static_cast<E*>(alloc(int64_t(c.b) * c.s * kvrow, sizeof(E)));
    E* v = static_cast<E*>(alloc(int64_t(c.b) * c.s * kvrow, sizeof(E)));
    for (int bi = 0; bi < c.b; ++bi) fill_normal(q + bi * qbs, int64_t(c.t) * qrow, seed + 17 * bi);
    fill_normal(k, int64_t(c.b) * c.s * kvrow, seed + 1000);
    fill_normal(v, int64_t(c.b) * c.s * kvrow, seed + 2000);
    p.q = q; p.k = k; p.v = v;
    p.q_batch_stride = qbs; p.q_row_stride = qrow;
    p.k_batch_stride = p.v_batch_stride = int64_t(c.s) * kvrow;
    p.k_row_stride = p.v_row_stride = kvrow;
  }
  p.q_head_stride = p.k_head_stride = p.v_head_stride = h;
  // ---- extras ----
  Lcg rng{seed * 7919 + 13};
  auto upload = [&](const void* host, int64_t bytes) {
    void* dev = alloc(bytes, 1);
    CHECK_CUDA(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    return dev;
  };
  ExtraParams& x = p.extra;
  if (c.lengths) {
    std::vector<int> ql(c.b), kl(c.b);
    for (int bi = 0; bi < c.b; ++bi) {
      const int q_opts[] = {c.t * 3 / 5, c.t, 0, std::max(c.t - 1, 0)};
      const int k_opts[] = {c.s / 2 + 3, std::max(c.s - 17, 1), c.s, 1};
      ql[bi] = std::min(q_opts[bi % 4], c.t);
      kl[bi] = std::min(k_opts[bi % 4], c.s);
    }
    x.q_seqlen = static_cast<const int32_t*>(upload(ql.data(), c.b * 4));
    x.kv_seqlen = static_cast<const int32_t*>(upload(kl.data(), c.b * 4));
  }
  if (c.segments) {
    std::vector<int> qi, ki;
    for (int bi = 0; bi < c.b; ++bi) {
      // Same document lengths on both sides when t == s (self-attention on packed documents).
      Lcg r2{rng.x + bi};
      Lcg r3 = r2;
      const std::vector<int> a = segment_ids(c.t, c.segments, r2), k2 = segment_ids(c.s, c.segments, r3);
      qi.insert(qi.end(), a.begin(), a.end());
      ki.insert(ki.end(), k2.begin(), k2.end());
    }
    const std::vector<int> qr = chunk_ranges(qi, c.b, c.t, ki, c.s);
    const std::vector<int> kr = chunk_ranges(ki, c.b, c.s, qi, c.t);
    x.q_segment_ids = static_cast<const int32_t*>(upload(qi.data(), int64_t(qi.size()) * 4));
    x.kv_segment_ids = static_cast<const int32_t*>(upload(ki.data(), int64_t(ki.size()) * 4));
    x.q_segment_range = static_cast<const int32_t*>(upload(qr.data(), int64_t(qr.size()) * 4));
    x.kv_segment_range = static_cast<const int32_t*>(upload(kr.data(), int64_t(kr.size()) * 4));
    x.q_chunks = (c.t + kSegmentChunk - 1) / kSegmentChunk;
    x.kv_chunks = (c.s + kSegmentChunk - 1) / kSegmentChunk;
  }
  if (c.bias) {
    const bool bb = c.bias != 2, bn = c.bias != 3, bt = c.bias != 2;
    const int64_t dims[4] = {bb ? c.b : 1, bn ? c.n : 1, bt ? c.t : 1, c.s};
    int64_t step = 1;
    for (int d = 3; d >= 0; --d) {
      x.bias_stride[d] = dims[d] == 1 ? 0 : step;
      step *= dims[d];
    }
    float* bias = static_cast<float*>(alloc(step, 4));
    fill_normal(bias, step, seed + 3000);
    x.bias = bias;
  }
  if (c.mask) {
    const int64_t elems = int64_t(c.b) * c.t * c.s;
    std::vector<uint8_t> m(elems);
    for (auto& v : m) v = rng.next() % 5 != 0;
    x.mask = static_cast<const uint8_t*>(upload(m.data(), elems));
    x.mask_stride[0] = int64_t(c.t) * c.s; x.mask_stride[1] = 0; x.mask_stride[2] = c.s; x.mask_stride[3] = 1;
  }
  x.softcap = c.softcap;
  x.per_element = x.bias || x.mask || x.softcap != 0.f;

  const int64_t obs = c.big_batch_stride > 0 ? c.big_batch_stride : int64_t(c.t) * qrow;
  const int64_t o_elems = obs * (c.b - 1) + int64_t(c.t) * qrow;
  E* o = static_cast<E*>(alloc(o_elems, sizeof(E)));
  CHECK_CUDA(cudaMemset(o, 0xff, o_elems * sizeof(E)));  // NaN poison
  const int64_t rows = int64_t(c.b) * c.n * c.t;
  p.o = o; p.o_batch_stride = obs; p.o_row_stride = qrow; p.o_head_stride = h;
  p.lse = static_cast<float*>(alloc(rows, 4));
  CHECK_CUDA(cudaMemset(p.lse, 0xff, rows * 4));

  CHECK_CUDA(var.run ? var.run(p, 0) : var.launch(p, 0, sm80::default_fwd_order(p, var.hdim)));
  CHECK_CUDA(cudaDeviceSynchronize());

  const int64_t out_elems = rows * h;
  float* ref = static_cast<float*>(alloc(out_elems * 2 + rows * 2, 4));
  float *ref_lp = ref + out_elems, *lse_ref = ref_lp + out_elems, *lse_lp = lse_ref + rows;
  const dim3 grid(c.t, c.n, c.b);
  const size_t sh = (c.s + 32) * sizeof(float);
  CHECK_CUDA(cudaFuncSetAttribute(reference_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  reference_kernel<E><<<grid, 128, sh>>>(p, false, ref, lse_ref);
  reference_kernel<E><<<grid, 128, sh>>>(p, true, ref_lp, lse_lp);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());

  std::vector<float> h_ref(out_elems), h_lp(out_elems), h_lse_ref(rows), h_lse(rows);
  std::vector<E> h_o(out_elems);
  CHECK_CUDA(cudaMemcpy(h_ref.data(), ref, out_elems * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_lp.data(), ref_lp, out_elems * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_lse_ref.data(), lse_ref, rows * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_lse.data(), p.lse, rows * 4, cudaMemcpyDeviceToHost));
  for (int bi = 0; bi < c.b; ++bi) {
    CHECK_CUDA(cudaMemcpy(h_o.data() + int64_t(bi) * c.t * qrow, o + bi * obs, int64_t(c.t) * qrow * sizeof(E), cudaMemcpyDeviceToHost));
  }
  double err = 0, err_lp = 0, err_lse = 0;
  int64_t bad = 0, empty_rows = 0;
  for (int64_t r = 0; r < rows; ++r) {  // r indexes [B, N, T]; outputs are [B, T, N, H]
    const int64_t bi = r / (int64_t(c.n) * c.t), ni = (r / c.t) % c.n, ti = r % c.t;
    const int64_t base = ((bi * c.t + ti) * c.n + ni) * h;
    const bool empty = h_lse_ref[r] == -INFINITY;
    empty_rows += empty;
    if (empty ? h_lse[r] != -INFINITY : !(std::fabs(h_lse[r] - h_lse_ref[r]) <= 1e-3 * std::max(1.f, std::fabs(h_lse_ref[r])))) ++bad;
    if (!empty) err_lse = std::max(err_lse, double(std::fabs(h_lse[r] - h_lse_ref[r])));
    for (int d = 0; d < h; ++d) {
      const float x = float(h_o[base + d]);
      if (std::isnan(x) || (empty && x != 0.f)) ++bad;
      err = std::max(err, double(std::fabs(x - h_ref[base + d])));
      err_lp = std::max(err_lp, double(std::fabs(h_lp[base + d] - h_ref[base + d])));
    }
  }
  const bool ok = bad == 0 && err <= 2 * err_lp + 1e-5;
  std::printf("%-4s %-22s %-26s h=%-3d err %.2e naive %.2e lse %.1e empty_rows %lld bad %lld\n",
              ok ? "PASS" : "FAIL", var.name.c_str(), c.name, h, err, err_lp, err_lse,
              (long long)empty_rows, (long long)bad);
  for (void* ptr : allocs) CHECK_CUDA(cudaFree(ptr));
  return ok;
}

int run_checks(const std::vector<Variant>& vars, bool quick) {
  const int U = -1;
  const Case cases[] = {
      {"full 2x256x256 mha", 2, 256, 256, 4, 4, 0, U, U, 1.f, false, 0},
      {"causal 300x300 gqa2", 2, 300, 300, 4, 2, 0, U, 0, 1.f, false, 0},
      {"causal t<s 200x333 mqa", 1, 200, 333, 4, 1, -24, U, 0, 1.f, false, 0},
      {"causal t>s 333x200", 1, 333, 200, 2, 2, -56, U, 0, 1.f, false, 0},
      {"window(50,20) 517", 1, 517, 517, 2, 1, 0, 50, 20, 1.f, false, 0},
      {"window(10,0) empty rows", 1, 300, 100, 2, 2, 0, 10, 0, 1.f, false, 0},
      {"window(0,7) t>s", 2, 400, 129, 2, 1, -8, 0, 7, 1.f, false, 0},
      {"s=1 t=65", 1, 65, 1, 3, 1, 0, U, U, 1.f, false, 0},
      {"s=0 (all empty)", 1, 70, 0, 2, 2, 0, U, U, 1.f, false, 0},
      {"negative scale", 1, 190, 250, 2, 2, 0, U, 0, -1.f, false, 0},
      {"scale 0", 1, 64, 100, 1, 1, 0, U, U, 0.f, false, 0},
      {"large scale 8", 1, 128, 300, 2, 2, 0, U, U, 8.f, false, 0},
      {"packed qkv causal 257", 2, 257, 257, 3, 3, 0, U, 0, 1.f, true, 0},
      {"long 1x2048 gqa4", 1, 2048, 2048, 8, 2, 0, U, U, 1.f, false, 0},
      // Extras: lengths, segments, bias, mask, softcap, alone and with windows.
      {"lengths 4x300x333", 4, 300, 333, 2, 1, 0, U, U, 1.f, false, 0, true},
      {"lengths causal 4x257", 4, 257, 257, 2, 2, -8, U, 0, 1.f, false, 0, true},
      {"lengths window(40,9) 4x300", 4, 300, 300, 2, 1, 0, 40, 9, 1.f, false, 0, true},
      {"packed docs 2x700", 2, 700, 700, 2, 2, 0, U, U, 1.f, false, 0, false, 1},
      {"packed docs causal 2x700", 2, 700, 700, 2, 1, 0, U, 0, 1.f, false, 0, false, 1},
      {"interleaved segs 1x333", 1, 333, 333, 2, 2, 0, U, U, 1.f, false, 0, false, 2},
      {"docs+lengths window 4x400", 4, 400, 400, 2, 2, 0, 100, 0, 1.f, false, 0, true, 1},
      {"bias full 2x200x260", 2, 200, 260, 2, 1, 0, U, U, 1.f, false, 0, false, 0, 1},
      {"bias [1,N,1,S] causal", 2, 300, 300, 2, 2, 0, U, 0, 1.f, false, 0, false, 0, 2},
      {"bias [B,1,T,S] neg scale", 2, 190, 250, 2, 2, 0, U, U, -1.f, false, 0, false, 0, 3},
      {"mask 2x300x350", 2, 300, 350, 2, 1, 0, U, U, 1.f, false, 0, false, 0, 0, true},
      {"mask causal lengths 4x200", 4, 200, 200, 2, 2, 0, U, 0, 1.f, false, 0, true, 0, 0, true},
      {"softcap 5 2x300", 2, 300, 300, 2, 2, 0, U, U, 4.f, false, 0, false, 0, 0, false, 5.f},
      {"softcap neg scale causal", 2, 257, 257, 2, 1, 0, U, 0, -4.f, false, 0, false, 0, 0, false, 3.f},
      {"everything window(64,32)", 4, 333, 300, 4, 2, -8, 64, 32, 1.f, false, 0, true, 1, 1, true, 8.f},
      {"everything causal interleaved", 4, 300, 300, 2, 2, 0, U, 0, -1.f, false, 0, true, 2, 3, true, 6.f},
  };
  int failed = 0, total = 0;
  uint64_t seed = 1234;
  for (const Variant& var : vars) {
    for (const Case& c : cases) {
      if (quick && c.t > 400) continue;
      const bool ok = var.bf16 ? run_case<cutlass::bfloat16_t>(var, c, ++seed)
                               : run_case<cutlass::half_t>(var, c, ++seed);
      failed += !ok;
      ++total;
    }
  }
  // 64-bit offsets: q and o batch strides past 2^31 elements (about 4.3 GB each).
  for (const Variant& var : vars) {
    if (!quick && var.is_default && var.bf16 && var.hdim == 128) {
      const Case big{"batch stride 2^31+8", 2, 100, 150, 1, 1, 0, -1, 0, 1.f, false, (int64_t(1) << 31) + 8};
      failed += !run_case<cutlass::bfloat16_t>(var, big, ++seed);
      ++total;
    }
  }
  std::printf("%d passed, %d failed\n", total - failed, failed);
  return failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// Benchmark: 16k tokens per batch, hidden 2048, bf16; median of 5 repeats of 10 launches.

// use_run: time the library entry point (defaults only: it picks the extras tiles itself).
double time_ms(const Variant& var, const FwdParams& p, FwdOrder order, bool use_run = false) {
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  auto launch = [&]() { return use_run && var.run ? var.run(p, 0) : var.launch(p, 0, order); };
  for (int i = 0; i < 2; ++i) CHECK_CUDA(launch());
  std::vector<float> reps;
  for (int r = 0; r < 5; ++r) {
    CHECK_CUDA(cudaEventRecord(e0));
    for (int i = 0; i < 10; ++i) CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    reps.push_back(ms / 10);
  }
  std::sort(reps.begin(), reps.end());
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  return reps[2];
}

int run_bench(const std::vector<Variant>& vars) {
  const int64_t tokens = 16384, hidden = 2048;
  void *q, *k, *v, *o;
  float* lse;
  for (void** ptr : {&q, &k, &v, &o}) CHECK_CUDA(cudaMalloc(ptr, tokens * hidden * 2));
  CHECK_CUDA(cudaMalloc(&lse, tokens * (hidden / 64) * 4));
  for (void* ptr : {q, k, v}) fill_normal(static_cast<cutlass::bfloat16_t*>(ptr), tokens * hidden, uint64_t(reinterpret_cast<uintptr_t>(ptr)));
  const int seqlens[] = {512, 1024, 2048, 4096, 8192, 16384};
  std::printf("%-24s %-6s %-6s %-12s %9s %9s\n", "variant", "causal", "seqlen", "order", "ms", "TFLOP/s");
  for (const Variant& var : vars) {
    if (!var.bf16) continue;
    for (int causal = 0; causal < 2; ++causal) {
      for (int t : seqlens) {
        if (!var.is_default && t != 2048 && t != 8192 && t != 16384) continue;
        FwdParams p{};
        p.b = int(tokens / t); p.t = p.s = t; p.h = p.hv = var.hdim; p.n = p.n_kv = int(hidden / var.hdim); p.group = 1;
        p.scale = 1.f / std::sqrt(float(var.hdim)); p.scale_log2 = p.scale * float(M_LOG2E);
        p.window_left = kUnbounded; p.window_right = causal ? 0 : kUnbounded; p.is_causal = causal;
        p.dtype = DType::kBFloat16;
        p.q = q; p.k = k; p.v = v; p.o = o; p.lse = lse;
        p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = int64_t(t) * hidden;
        p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = hidden;
        p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = var.hdim;
        const double flops = 4.0 * p.b * p.n * double(t) * t * var.hdim / (causal ? 2 : 1);
        std::vector<FwdOrder> orders = {sm80::default_fwd_order(p, var.hdim)};
        if (causal && var.is_default && (t == 2048 || t == 8192)) {
          orders.push_back(orders[0] == FwdOrder::kHeavyFirst ? FwdOrder::kRowBlocksFastest : FwdOrder::kHeavyFirst);
        }
        for (FwdOrder order : orders) {
          const double ms = time_ms(var, p, order);
          std::printf("%-24s %-6d %-6d %-12s %9.3f %9.1f\n", var.name.c_str(), causal, t,
                      order == FwdOrder::kHeavyFirst ? "heavy-first" : "rows-first", ms, flops / ms * 1e-9);
        }
      }
    }
  }
  return 0;
}

// Issue 5's performance points: hdim 128 (default tiles) at seqlen 16k, TFLOP/s counted over the
// visible pairs only, next to the dense kernel in the same run.
int run_bench_extras(const std::vector<Variant>& vars) {
  const int t = 16384, hdim = 128, heads = 16;
  void *q, *k, *v, *o;
  float* lse;
  const int64_t elems = int64_t(t) * heads * hdim;
  for (void** ptr : {&q, &k, &v, &o}) CHECK_CUDA(cudaMalloc(ptr, elems * 2));
  CHECK_CUDA(cudaMalloc(&lse, int64_t(t) * heads * 4));
  for (void* ptr : {q, k, v}) fill_normal(static_cast<cutlass::bfloat16_t*>(ptr), elems, uint64_t(reinterpret_cast<uintptr_t>(ptr)));
  // 8 packed documents of 2k: ids j / 2048, and their chunk ranges.
  std::vector<int> ids(t);
  for (int j = 0; j < t; ++j) ids[j] = j / 2048;
  const std::vector<int> ranges = chunk_ranges(ids, 1, t, ids, t);  // both sides
  int *d_ids, *d_ranges;
  CHECK_CUDA(cudaMalloc(&d_ids, t * 4));
  CHECK_CUDA(cudaMalloc(&d_ranges, ranges.size() * 4));
  CHECK_CUDA(cudaMemcpy(d_ids, ids.data(), t * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_ranges, ranges.data(), ranges.size() * 4, cudaMemcpyHostToDevice));
  struct Point { const char* name; int left, right; bool docs; };
  const Point points[] = {{"dense", -1, -1, false},         {"causal", -1, 0, false},
                          {"window(1024,0)", 1024, 0, false}, {"window(512,512)", 512, 512, false},
                          {"8 docs of 2k", -1, -1, true},    {"8 docs of 2k causal", -1, 0, true}};
  std::printf("%-24s %-22s %9s %9s\n", "variant", "point", "ms", "TFLOP/s");
  for (const Variant& var : vars) {
    if (!var.bf16 || var.hdim != hdim) continue;
    for (const Point& pt : points) {
      FwdParams p{};
      p.b = 1; p.t = p.s = t; p.h = p.hv = hdim; p.n = p.n_kv = heads; p.group = 1;
      p.scale = 1.f / std::sqrt(float(hdim)); p.scale_log2 = p.scale * float(M_LOG2E);
      p.window_left = pt.left < 0 ? kUnbounded : pt.left;
      p.window_right = pt.right < 0 ? kUnbounded : pt.right;
      p.is_causal = p.window_right == 0 && p.window_left == kUnbounded;
      p.dtype = DType::kBFloat16;
      p.q = q; p.k = k; p.v = v; p.o = o; p.lse = lse;
      p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = elems;
      p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = int64_t(heads) * hdim;
      p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = hdim;
      if (pt.docs) {
        p.extra.q_segment_ids = p.extra.kv_segment_ids = d_ids;
        p.extra.q_segment_range = p.extra.kv_segment_range = d_ranges;
        p.extra.q_chunks = p.extra.kv_chunks = t / kSegmentChunk;
      }
      double pairs = 0;  // visible (query, key) pairs
      const Window w{p.window_left, p.window_right};
      for (int i = 0; i < t; ++i) {
        Range r = w.keys_of_row(i, t);
        if (pt.docs) r = Range{std::max(r.lo, i / 2048 * 2048), std::min(r.hi, i / 2048 * 2048 + 2048)};
        pairs += std::max(0, r.hi - r.lo);
      }
      const double ms = time_ms(var, p, sm80::default_fwd_order(p, hdim), true);
      std::printf("%-24s %-22s %9.3f %9.1f\n", var.name.c_str(), pt.name, ms, 4.0 * heads * pairs * hdim / ms * 1e-9);
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::vector<Variant> vars;
  for (const Variant& v : all_variants()) {  // optional filter: variant name contains argv[2]
    if (argc <= 2 || v.name.find(argv[2]) != std::string::npos) vars.push_back(v);
  }
  if (mode == "check" || mode == "quick") return run_checks(vars, mode == "quick");
  if (mode == "bench") return run_bench(vars);
  if (mode == "bench_extras") return run_bench_extras(vars);
  if (mode == "list") {
    for (const Variant& v : vars) std::printf("%s\n", v.name.c_str());
    // Which tiles run_fwd takes on this device at hdim 128 (FwdDefaultTraits::kCtas).
    using D = sm80::FwdDefaultTraits<cutlass::bfloat16_t, 128>;
    bool fits = false;
    CHECK_CUDA(sm80::device_smem_fits(D::type::kSmemBytes, D::kCtas, &fits));
    std::printf("hdim 128 dense calls run the %s tiles\n", fits ? "default" : "fallback");
    return 0;
  }
  std::fprintf(stderr, "usage: fwd_check check|quick|bench|list [variant name part]\n");
  return 2;
}
