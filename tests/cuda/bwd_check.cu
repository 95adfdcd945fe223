// Standalone check and timing of the sm80 backward kernel (no JAX needed).
//
//   nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr \
//     -gencode arch=compute_90,code=sm_90 -I csrc -I <cutlass>/include \
//     tests/cuda/bwd_check.cu -o out/bwd_check
//   out/bwd_check [check|time|quick|timex|order]   (default: check then time; timex: issue
//                                       5's window / packed-document points only; order:
//                                       both CTA orders at the benchmark shapes)
//   out/bwd_check variant HDIM BITS     one variant of the defaults (BITS: 1 TMA dQ, 2 late
//                                       exponentials, 4 rotated start): checks, then times
//
// check: run_bwd (what the JAX extension calls) and the portable configs;
//   fresh random inputs per case; a naive float32 GPU reference gives lse, delta and
//   dq/dk/dv; a second naive pass rounds every intermediate to the input dtype (what a
//   plain implementation in that dtype computes). A case passes when, for each gradient,
//   max|kernel - ref32| <= 2 * max|lowp - ref32| + 1e-5 and nothing is NaN. dK/dV are
//   poisoned with NaN first, so unwritten elements fail; each case runs twice and dK/dV
//   must match bit for bit (dQ is atomically accumulated, so only to rounding).
// time: the benchmark shapes (16k tokens, hidden 2048), kernel alone, median of 5 x 10.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sm80/bwd_launch.cuh"
#include "chunk_ranges.h"

using jax_flash::BwdParams;
using jax_flash::kUnbounded;
using jax_flash::sm80::BwdConfig;
using jax_flash::sm80::BwdTraits;
using jax_flash::sm80::launch_bwd;
using jax_flash::sm80::run_bwd;
using jax_flash::sm80::bwd::BwdOrder;
using bf16 = cutlass::bfloat16_t;
using fp16 = cutlass::half_t;

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__,    \
                  __LINE__, #x);                                                       \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)

// ------------------------------------------------------------------------------------
// Naive reference (one thread per row), float32 accumulation. With lowp, every
// intermediate is rounded to E as a plain implementation in E would store it.

template <typename E>
__device__ float rnd(float x, bool lowp) {
  return lowp ? static_cast<float>(E(x)) : x;
}

// Offset of (b, n, i, j) in a broadcastable [B|1, N|1, T|1, S|1] array.
__device__ int64_t pair_at(const int64_t (&st)[4], int b, int n, int i, int j) {
  return b * st[0] + n * st[1] + i * st[2] + j * st[3];
}

// Every visibility rule of the "xla" path, written out plainly.
__device__ bool visible(const BwdParams& p, int b, int n, int i, int j) {
  const jax_flash::ExtraParams& e = p.extra;
  if (j < 0 || j >= p.s) return false;
  if (p.window_left < kUnbounded && j < i - p.window_left) return false;
  if (p.window_right < kUnbounded && j > i + p.window_right) return false;
  if (e.q_seqlen && i >= e.q_seqlen[b]) return false;
  if (e.kv_seqlen && j >= e.kv_seqlen[b]) return false;
  if (e.q_segment_ids &&
      e.q_segment_ids[int64_t{b} * p.t + i] != e.kv_segment_ids[int64_t{b} * p.s + j])
    return false;
  return !e.mask || e.mask[pair_at(e.mask_stride, b, n, i, j)] != 0;
}

template <typename E>
__device__ float dot_rows(const E* a, const E* b, int h) {
  float acc = 0.f;
  for (int x = 0; x < h; ++x) acc += static_cast<float>(a[x]) * static_cast<float>(b[x]);
  return acc;
}

template <typename E>
__device__ const E* q_row(const BwdParams& p, int b, int n, int i) {
  return static_cast<const E*>(p.q) + b * p.q_batch_stride + n * p.q_head_stride + int64_t{i} * p.q_row_stride;
}
template <typename E>
__device__ const E* do_row(const BwdParams& p, int b, int n, int i) {
  return static_cast<const E*>(p.dout) + b * p.do_batch_stride + n * p.do_head_stride + int64_t{i} * p.do_row_stride;
}
template <typename E>
__device__ const E* k_row(const BwdParams& p, int b, int kh, int j) {
  return static_cast<const E*>(p.k) + b * p.k_batch_stride + kh * p.k_head_stride + int64_t{j} * p.k_row_stride;
}
template <typename E>
__device__ const E* v_row(const BwdParams& p, int b, int kh, int j) {
  return static_cast<const E*>(p.v) + b * p.v_batch_stride + kh * p.v_head_stride + int64_t{j} * p.v_row_stride;
}

// logit = softcap * tanh(scale * raw / softcap) + bias; th = the tanh (0 without softcap).
__device__ float score(float raw, const BwdParams& p, int b, int n, int i, int j, float* th = nullptr) {
  float x = raw * p.scale, t = 0.f;
  if (p.extra.softcap != 0.f) {
    t = tanhf(x / p.extra.softcap);
    x = p.extra.softcap * t;
  }
  if (p.extra.bias) x += p.extra.bias[pair_at(p.extra.bias_stride, b, n, i, j)];
  if (th) *th = t;
  return x;
}

// lse[b,n,i]; delta[b,n,i] = sum(dO * O) with O from this pass.
template <typename E>
__global__ void ref_forward(BwdParams p, bool lowp, float* lse, float* delta) {
  const int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (row >= int64_t{p.b} * p.n * p.t) return;
  const int i = row % p.t, n = (row / p.t) % p.n, b = row / (int64_t{p.t} * p.n);
  const int kh = n / p.group;
  const E* q = q_row<E>(p, b, n, i);
  float mx = -INFINITY;
  for (int j = 0; j < p.s; ++j)
    if (visible(p, b, n, i, j))
      mx = fmaxf(mx, rnd<E>(score(dot_rows(q, k_row<E>(p, b, kh, j), p.h), p, b, n, i, j), lowp));
  float l = -INFINITY, dsum = 0.f;
  if (mx != -INFINITY) {
    float sum = 0.f;
    for (int j = 0; j < p.s; ++j)
      if (visible(p, b, n, i, j))
        sum += expf(rnd<E>(score(dot_rows(q, k_row<E>(p, b, kh, j), p.h), p, b, n, i, j), lowp) - mx);
    l = mx + logf(sum);
    float o[256];
    for (int x = 0; x < p.h; ++x) o[x] = 0.f;
    for (int j = 0; j < p.s; ++j) {
      if (!visible(p, b, n, i, j)) continue;
      const float pr = rnd<E>(
          expf(rnd<E>(score(dot_rows(q, k_row<E>(p, b, kh, j), p.h), p, b, n, i, j), lowp) - l), lowp);
      const E* v = v_row<E>(p, b, kh, j);
      for (int x = 0; x < p.h; ++x) o[x] += pr * static_cast<float>(v[x]);
    }
    const E* dout = do_row<E>(p, b, n, i);
    for (int x = 0; x < p.h; ++x) dsum += static_cast<float>(dout[x]) * rnd<E>(o[x], lowp);
  }
  lse[row] = l;
  delta[row] = dsum;
}

// P, dS of one (i, j) pair, as the reference computes them: dlogit = d loss / d logit (what
// dbias sums) and ds = the gradient to scale * q.k (dlogit * (1 - tanh^2) with softcap).
template <typename E>
__device__ void ref_pds(const BwdParams& p, bool lowp, const float* lse, const float* delta,
                        int b, int n, int i, int j, float& pr, float& ds, float* dlogit = nullptr) {
  const int kh = n / p.group;
  const int64_t row = (int64_t{b} * p.n + n) * p.t + i;
  float th;
  const float s = rnd<E>(score(dot_rows(q_row<E>(p, b, n, i), k_row<E>(p, b, kh, j), p.h), p, b, n, i, j, &th), lowp);
  pr = rnd<E>(expf(s - lse[row]), lowp);
  const float dp = rnd<E>(dot_rows(do_row<E>(p, b, n, i), v_row<E>(p, b, kh, j), p.h), lowp);
  const float dl = pr * (dp - delta[row]);
  if (dlogit) *dlogit = dl;
  ds = rnd<E>(dl * (1.f - th * th), lowp);
}

// dbias (bias's broadcast shape, zeroed): every visible pair adds its dlogit.
template <typename E>
__global__ void ref_dbias(BwdParams p, bool lowp, const float* lse, const float* delta, float* dbias) {
  const int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (row >= int64_t{p.b} * p.n * p.t) return;
  const int i = row % p.t, n = (row / p.t) % p.n, b = row / (int64_t{p.t} * p.n);
  for (int j = 0; j < p.s; ++j) {
    if (!visible(p, b, n, i, j) || lse[row] == -INFINITY) continue;
    float pr, ds, dl;
    ref_pds<E>(p, lowp, lse, delta, b, n, i, j, pr, ds, &dl);
    atomicAdd(dbias + pair_at(p.extra.bias_stride, b, n, i, j), dl);
  }
}

// dq dense [B, T, N, H].
template <typename E>
__global__ void ref_dq(BwdParams p, bool lowp, const float* lse, const float* delta, float* dq) {
  const int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (row >= int64_t{p.b} * p.n * p.t) return;
  const int i = row % p.t, n = (row / p.t) % p.n, b = row / (int64_t{p.t} * p.n);
  float acc[256];
  for (int x = 0; x < p.h; ++x) acc[x] = 0.f;
  for (int j = 0; j < p.s; ++j) {
    if (!visible(p, b, n, i, j) || lse[row] == -INFINITY) continue;
    float pr, ds;
    ref_pds<E>(p, lowp, lse, delta, b, n, i, j, pr, ds);
    const E* k = k_row<E>(p, b, n / p.group, j);
    for (int x = 0; x < p.h; ++x) acc[x] += ds * static_cast<float>(k[x]);
  }
  float* out = dq + ((int64_t{b} * p.t + i) * p.n + n) * p.h;
  for (int x = 0; x < p.h; ++x) out[x] = rnd<E>(acc[x] * p.scale, lowp);
}

// dk, dv dense [B, S, K, H].
template <typename E>
__global__ void ref_dkv(BwdParams p, bool lowp, const float* lse, const float* delta, float* dk,
                        float* dv) {
  const int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (row >= int64_t{p.b} * p.n_kv * p.s) return;
  const int j = row % p.s, kh = (row / p.s) % p.n_kv, b = row / (int64_t{p.s} * p.n_kv);
  float ak[256], av[256];
  for (int x = 0; x < p.h; ++x) ak[x] = av[x] = 0.f;
  for (int n = kh * p.group; n < (kh + 1) * p.group; ++n) {
    for (int i = 0; i < p.t; ++i) {
      if (!visible(p, b, n, i, j) || lse[(int64_t{b} * p.n + n) * p.t + i] == -INFINITY) continue;
      float pr, ds;
      ref_pds<E>(p, lowp, lse, delta, b, n, i, j, pr, ds);
      const E* q = q_row<E>(p, b, n, i);
      const E* dout = do_row<E>(p, b, n, i);
      for (int x = 0; x < p.h; ++x) {
        ak[x] += ds * static_cast<float>(q[x]);
        av[x] += pr * static_cast<float>(dout[x]);
      }
    }
  }
  float* ok = dk + ((int64_t{b} * p.s + j) * p.n_kv + kh) * p.h;
  float* ov = dv + ((int64_t{b} * p.s + j) * p.n_kv + kh) * p.h;
  for (int x = 0; x < p.h; ++x) {
    ok[x] = rnd<E>(ak[x] * p.scale, lowp);
    ov[x] = rnd<E>(av[x], lowp);
  }
}

// ------------------------------------------------------------------------------------
// Check cases.

// Extra inputs of a case (params.h ExtraParams); none by default.
struct Extra {
  bool lengths = false;  // q/kv lengths per batch row: partial, full or past the end, zero
  int segments = 0;      // 1: contiguous documents of uneven sizes; 2: random ids in {0, 1, 2}
  int bias = 0;          // 1: [B, N, T, S]; 2: [1, N, T, S]; 3: [B, 1, 1, S]; with dbias
  bool mask = false;     // [B, 1, T, S], about 70% true
  float softcap = 0.f;
};

struct Case {
  const char* name;
  int b, t, s, n, n_kv, h;
  int wl, wr;      // kUnbounded = none
  int row_pad;     // extra elements per row of q/k/v/dO (strided, non-dense layout)
  Extra x = {};
};

template <typename E>
struct DeviceBuf {
  E* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuf(size_t n) : count(n) { CK(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(E))); }
  ~DeviceBuf() { cudaFree(ptr); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

template <typename E>
std::vector<float> to_host_float(const E* d, size_t n) {
  std::vector<E> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(E), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t x = 0; x < n; ++x) f[x] = static_cast<float>(h[x]);
  return f;
}

struct ErrStat {
  double max_abs = 0, num = 0, den = 0;
  bool nan = false;
  void add(double got, double ref) {
    if (std::isnan(got)) nan = true;
    max_abs = std::max(max_abs, std::fabs(got - ref));
    num += (got - ref) * (got - ref);
    den += ref * ref;
  }
  double rel() const { return den > 0 ? std::sqrt(num / den) : std::sqrt(num); }
};

static std::mt19937_64 g_rng(20261121);

// Device copies of host arrays, freed with the owner.
struct Uploads {
  std::vector<void*> ptrs;
  template <typename T>
  T* operator()(const std::vector<T>& h) {
    void* d = nullptr;
    CK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(T)));
    CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    ptrs.push_back(d);
    return static_cast<T*>(d);
  }
  ~Uploads() {
    for (void* d : ptrs) cudaFree(d);
  }
};

// Fills p.extra (and dbias's size) for the case's extras; arrays live in `up`.
size_t set_extras(BwdParams& p, const Extra& x, Uploads& up) {
  jax_flash::ExtraParams& e = p.extra;
  std::uniform_int_distribution<int> coin(0, 99);
  if (x.lengths) {
    std::vector<int32_t> ql(p.b), kl(p.b);
    for (int b = 0; b < p.b; ++b) {
      const int kind = b % 3;  // partial; full or past the end; zero rows / one key
      ql[b] = kind == 0 ? 1 + coin(g_rng) * std::max(p.t - 1, 0) / 100 : kind == 1 ? p.t + 3 : 0;
      kl[b] = kind == 0 ? 1 + coin(g_rng) * std::max(p.s - 1, 0) / 100 : kind == 1 ? p.s : 1;
    }
    e.q_seqlen = up(ql);
    e.kv_seqlen = up(kl);
  }
  if (x.segments) {
    auto ids = [&](int len) {
      std::vector<int32_t> v(size_t(p.b) * len);
      for (int b = 0; b < p.b; ++b) {
        int doc = 0;
        for (int i = 0; i < len; ++i) {
          // Contiguous: about 5 documents per row, cut at random places.
          if (x.segments == 1 && i > 0 && coin(g_rng) < 500 / std::max(len, 1)) ++doc;
          v[size_t(b) * len + i] = x.segments == 1 ? doc : coin(g_rng) % 3;
        }
      }
      return v;
    };
    auto qs = ids(p.t), ks = ids(p.s);
    if (x.segments == 1) {  // the same documents on both sides: rescale key ids to query ids
      for (int b = 0; b < p.b; ++b) {
        const int qdocs = p.t ? qs[size_t(b) * p.t + p.t - 1] + 1 : 1;
        const int kdocs = p.s ? ks[size_t(b) * p.s + p.s - 1] + 1 : 1;
        for (int j = 0; j < p.s; ++j) ks[size_t(b) * p.s + j] = ks[size_t(b) * p.s + j] * qdocs / kdocs;
      }
    }
    e.q_segment_ids = up(qs);
    e.kv_segment_ids = up(ks);
    e.q_segment_range = up(chunk_ranges(qs, p.b, p.t, ks, p.s));
    e.kv_segment_range = up(chunk_ranges(ks, p.b, p.s, qs, p.t));
    e.q_chunks = (p.t + jax_flash::kSegmentChunk - 1) / jax_flash::kSegmentChunk;
    e.kv_chunks = (p.s + jax_flash::kSegmentChunk - 1) / jax_flash::kSegmentChunk;
  }
  size_t bias_elems = 0;
  if (x.bias) {
    const int bb = x.bias == 2 ? 1 : p.b, bn = x.bias == 3 ? 1 : p.n, bt = x.bias == 3 ? 1 : p.t;
    bias_elems = size_t(bb) * bn * bt * p.s;
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> h(bias_elems);
    for (auto& v : h) v = nd(g_rng);
    e.bias = up(h);
    e.bias_stride[0] = bb == 1 ? 0 : int64_t{bn} * bt * p.s;
    e.bias_stride[1] = bn == 1 ? 0 : int64_t{bt} * p.s;
    e.bias_stride[2] = bt == 1 ? 0 : p.s;
    e.bias_stride[3] = 1;
  }
  if (x.mask) {
    std::vector<uint8_t> h(size_t(p.b) * p.t * p.s);
    for (auto& v : h) v = coin(g_rng) < 70;
    e.mask = up(h);
    e.mask_stride[0] = int64_t{p.t} * p.s;
    e.mask_stride[1] = 0;
    e.mask_stride[2] = p.s;
    e.mask_stride[3] = 1;
  }
  e.softcap = x.softcap;
  e.per_element = x.bias || x.mask || x.softcap != 0.f;
  return bias_elems;
}

// How a check launches the kernel: one tile configuration (in the default CTA order, or in
// kOrder >= 0 for every case), or run_bwd's choice for the device (what the JAX extension
// calls).
template <typename Cfg, int kOrder = -1>
struct ByConfig {
  static constexpr int kHeadDim = Cfg::kHeadDim;
  template <typename E>
  static cudaError_t launch(const BwdParams& p, cudaStream_t stream) {
    if constexpr (kOrder >= 0) return launch_bwd<E, Cfg>(p, stream, BwdOrder(kOrder));
    return launch_bwd<E, Cfg>(p, stream);
  }
};
template <int H>
struct ByDispatch {
  static constexpr int kHeadDim = H;
  template <typename E>
  static cudaError_t launch(const BwdParams& p, cudaStream_t stream) {
    return run_bwd<E, H>(p, stream);
  }
};

// Runs one case through launcher L; returns true on pass.
template <typename E, typename L>
bool run_case(const Case& c, const char* cfg_name) {
  const int g = c.n / c.n_kv;
  const int row_q = c.n * c.h + c.row_pad;   // q, dO row stride (elements)
  const int row_k = c.n_kv * c.h + c.row_pad;
  const size_t nq = size_t(c.b) * c.t * row_q, nk = size_t(c.b) * c.s * row_k;
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](size_t n) {
    std::vector<E> h(n);
    for (auto& x : h) x = E(nd(g_rng));
    return h;
  };
  DeviceBuf<E> q(nq), k(nk), v(nk), dout(nq);
  for (auto* buf : {&q, &dout}) {
    auto h = fill(nq);
    CK(cudaMemcpy(buf->ptr, h.data(), nq * sizeof(E), cudaMemcpyHostToDevice));
  }
  for (auto* buf : {&k, &v}) {
    auto h = fill(nk);
    CK(cudaMemcpy(buf->ptr, h.data(), nk * sizeof(E), cudaMemcpyHostToDevice));
  }
  const size_t rows = size_t(c.b) * c.n * c.t;
  const size_t n_dq = size_t(c.b) * c.t * c.n * c.h, n_dk = size_t(c.b) * c.s * c.n_kv * c.h;
  DeviceBuf<float> lse(rows), delta(rows), lse_lp(rows), delta_lp(rows);
  DeviceBuf<float> rdq(n_dq), rdk(n_dk), rdv(n_dk), ldq(n_dq), ldk(n_dk), ldv(n_dk);
  DeviceBuf<float> dq_accum(n_dq);
  DeviceBuf<E> dk(n_dk), dv(n_dk);

  BwdParams p{};
  p.q = q.ptr; p.k = k.ptr; p.v = v.ptr; p.dout = dout.ptr;
  p.q_batch_stride = int64_t{c.t} * row_q; p.q_row_stride = row_q; p.q_head_stride = c.h;
  p.k_batch_stride = int64_t{c.s} * row_k; p.k_row_stride = row_k; p.k_head_stride = c.h;
  p.v_batch_stride = p.k_batch_stride; p.v_row_stride = row_k; p.v_head_stride = c.h;
  p.do_batch_stride = p.q_batch_stride; p.do_row_stride = row_q; p.do_head_stride = c.h;
  p.b = c.b; p.t = c.t; p.s = c.s; p.n = c.n; p.n_kv = c.n_kv; p.h = c.h; p.hv = c.h;
  p.group = g;
  p.scale = 1.f / std::sqrt(float(c.h));
  p.scale_log2 = p.scale * 1.4426950408889634f;
  p.window_left = c.wl; p.window_right = c.wr;
  p.is_causal = c.wl == kUnbounded && c.wr == 0;
  p.dtype = std::is_same_v<E, bf16> ? jax_flash::DType::kBFloat16 : jax_flash::DType::kFloat16;
  p.num_sms = 0;
  p.dq_accum = dq_accum.ptr;
  p.dk = dk.ptr; p.dv = dv.ptr;
  p.dq_batch_stride = int64_t{c.t} * c.n * c.h; p.dq_row_stride = int64_t{c.n} * c.h; p.dq_head_stride = c.h;
  p.dk_batch_stride = int64_t{c.s} * c.n_kv * c.h; p.dk_row_stride = int64_t{c.n_kv} * c.h; p.dk_head_stride = c.h;
  p.dv_batch_stride = p.dk_batch_stride; p.dv_row_stride = p.dk_row_stride; p.dv_head_stride = c.h;
  Uploads up;
  const size_t n_db = set_extras(p, c.x, up);
  DeviceBuf<float> rdb(n_db), ldb(n_db), dbias(n_db);
  if (n_db) {
    CK(cudaMemset(rdb.ptr, 0, n_db * sizeof(float)));
    CK(cudaMemset(ldb.ptr, 0, n_db * sizeof(float)));
  }

  const int thr = 128;
  auto blocks = [&](size_t n) { return unsigned((n + thr - 1) / thr); };
  for (bool lowp : {false, true}) {
    float* l = lowp ? lse_lp.ptr : lse.ptr;
    float* d = lowp ? delta_lp.ptr : delta.ptr;
    if (rows) {
      ref_forward<E><<<blocks(rows), thr>>>(p, lowp, l, d);
      CK(cudaGetLastError());
      ref_dq<E><<<blocks(rows), thr>>>(p, lowp, l, d, lowp ? ldq.ptr : rdq.ptr);
      CK(cudaGetLastError());
      if (n_db) {
        ref_dbias<E><<<blocks(rows), thr>>>(p, lowp, l, d, lowp ? ldb.ptr : rdb.ptr);
        CK(cudaGetLastError());
      }
    }
    const size_t kv_rows = size_t(c.b) * c.n_kv * c.s;
    if (kv_rows) {
      ref_dkv<E><<<blocks(kv_rows), thr>>>(p, lowp, l, d, lowp ? ldk.ptr : rdk.ptr, lowp ? ldv.ptr : rdv.ptr);
      CK(cudaGetLastError());
    }
  }
  p.lse = lse.ptr;
  p.delta = delta.ptr;
  p.dbias = n_db ? dbias.ptr : nullptr;

  std::vector<float> got_dq[2], got_dk[2], got_dv[2], got_db(n_db);
  for (int rep = 0; rep < 2; ++rep) {
    CK(cudaMemset(dq_accum.ptr, 0, n_dq * sizeof(float)));
    if (n_db) CK(cudaMemset(dbias.ptr, 0, n_db * sizeof(float)));
    CK(cudaMemset(dk.ptr, 0xFF, n_dk * sizeof(E)));  // NaN in fp16 and bf16
    CK(cudaMemset(dv.ptr, 0xFF, n_dk * sizeof(E)));
    CK((L::template launch<E>(p, 0)));
    CK(cudaDeviceSynchronize());
    got_dq[rep].resize(n_dq);
    CK(cudaMemcpy(got_dq[rep].data(), dq_accum.ptr, n_dq * sizeof(float), cudaMemcpyDeviceToHost));
    for (auto& x : got_dq[rep]) x = static_cast<float>(E(x));  // the final cast XLA applies
    got_dk[rep] = to_host_float(dk.ptr, n_dk);
    got_dv[rep] = to_host_float(dv.ptr, n_dk);
    if (n_db) CK(cudaMemcpy(got_db.data(), dbias.ptr, n_db * sizeof(float), cudaMemcpyDeviceToHost));
  }
  auto host = [](const DeviceBuf<float>& b) {
    std::vector<float> h(b.count);
    CK(cudaMemcpy(h.data(), b.ptr, b.count * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
  };
  const auto h_rdq = host(rdq), h_rdk = host(rdk), h_rdv = host(rdv);
  const auto h_ldq = host(ldq), h_ldk = host(ldk), h_ldv = host(ldv);

  bool ok = true;
  std::string msg;
  auto judge = [&](const char* what, const std::vector<float>& got, const std::vector<float>& ref,
                   const std::vector<float>& lp) {
    ErrStat ek, el;
    for (size_t x = 0; x < ref.size(); ++x) {
      ek.add(got[x], ref[x]);
      el.add(lp[x], ref[x]);
    }
    const bool pass = !ek.nan && ek.max_abs <= 2 * el.max_abs + 1e-5;
    ok = ok && pass;
    char buf[160];
    std::snprintf(buf, sizeof buf, " %s %.2e/%.2e(rel %.1e)%s", what, ek.max_abs, el.max_abs,
                  ek.rel(), pass ? "" : (ek.nan ? " NaN!" : " FAIL"));
    msg += buf;
  };
  judge("dq", got_dq[0], h_rdq, h_ldq);
  judge("dk", got_dk[0], h_rdk, h_ldk);
  judge("dv", got_dv[0], h_rdv, h_ldv);
  if (n_db) judge("db", got_db, host(rdb), host(ldb));
  const bool same_kv = std::memcmp(got_dk[0].data(), got_dk[1].data(), n_dk * sizeof(float)) == 0 &&
                       std::memcmp(got_dv[0].data(), got_dv[1].data(), n_dk * sizeof(float)) == 0;
  double dq_rep = 0;
  for (size_t x = 0; x < n_dq; ++x) dq_rep = std::max(dq_rep, double(std::fabs(got_dq[0][x] - got_dq[1][x])));
  if (!same_kv) { ok = false; msg += " dK/dV differ between runs!"; }
  std::printf("%s %-5s %-22s %-26s b%d t%d s%d n%d k%d h%d wl%d wr%d:%s dqrep %.1e\n",
              ok ? "PASS" : "FAIL", std::is_same_v<E, bf16> ? "bf16" : "fp16", cfg_name, c.name,
              c.b, c.t, c.s, c.n, c.n_kv, c.h, c.wl == kUnbounded ? -1 : c.wl,
              c.wr == kUnbounded ? -1 : c.wr, msg.c_str(), dq_rep);
  if (!ok) {
    // Where the first dK error sits, to localize indexing bugs.
    for (size_t x = 0; x < n_dk; ++x) {
      if (!(std::fabs(got_dk[0][x] - h_rdk[x]) <= 2 * std::fabs(h_ldk[x] - h_rdk[x]) + 1e-2)) {
        const int hh = x % c.h, kh = (x / c.h) % c.n_kv, j = (x / (c.h * c.n_kv)) % c.s;
        std::printf("    first dk mismatch: j=%d kvh=%d col=%d got %g ref %g\n", j, kh, hh, got_dk[0][x], h_rdk[x]);
        break;
      }
    }
    for (size_t x = 0; x < n_dq; ++x) {
      if (!(std::fabs(got_dq[0][x] - h_rdq[x]) <= 2 * std::fabs(h_ldq[x] - h_rdq[x]) + 1e-2)) {
        const int hh = x % c.h, n = (x / c.h) % c.n, i = (x / (c.h * c.n)) % c.t;
        std::printf("    first dq mismatch: i=%d head=%d col=%d got %g ref %g\n", i, n, hh, got_dq[0][x], h_rdq[x]);
        break;
      }
    }
  }
  return ok;
}

constexpr int U = kUnbounded;

template <typename E, typename L>
int run_cases(const char* cfg_name, bool quick) {
  constexpr int H = L::kHeadDim;
  const std::vector<Case> cases = {
      {"dense", 2, 256, 256, 2, 2, H, U, U, 0},
      {"gqa causal h<H odd T,S", 1, 200, 333, 4, 2, H - 24, U, 0, 0},
      {"mqa window", 1, 517, 129, 3, 1, H, 40, 7, 0},
      {"empty rows (T>S, band 0)", 2, 300, 100, 2, 2, H, 0, 0, 0},
      {"one query", 1, 1, 1000, 2, 1, H, U, U, 0},
      {"one key causal", 1, 1000, 1, 2, 2, H, U, 0, 0},
      {"causal multi-block", 1, 1024, 1024, 2, 1, H, U, 0, 0},
      {"strided rows, T<S causal", 2, 190, 450, 2, 2, H - 8, U, 0, 24},
      {"window left only", 1, 700, 700, 2, 2, H, 100, U, 0},
      {"empty T", 1, 0, 130, 2, 2, H, U, U, 0},
  };
  int fails = 0;
  for (size_t x = 0; x < cases.size(); ++x) {
    if (quick && x != 1 && x != 2) continue;
    fails += !run_case<E, L>(cases[x], cfg_name);
  }
  std::printf("CHECKCFG %s %s hdim %d: %d failing\n", cfg_name,
              std::is_same_v<E, bf16> ? "bf16" : "fp16", H, fails);
  return fails;
}

// Extras (lengths, segments, bias + dbias, mask, softcap), alone and combined with windows,
// GQA and odd sizes. Each runs the extras kernel; the dense cases above run the other.
template <typename E, typename L>
int run_extra_cases(const char* cfg_name, bool quick) {
  constexpr int H = L::kHeadDim;
  Extra len, seg, rseg, bias, bias_b, bias_s, mask, cap, all;
  len.lengths = true;
  seg.segments = 1;
  rseg.segments = 2;
  rseg.lengths = true;
  bias.bias = 1;
  bias_b.bias = 2;
  bias_s.bias = 3;
  mask.mask = true;
  cap.softcap = 5.f;
  all = {true, 1, 2, true, 5.f};
  const std::vector<Case> cases = {
      {"lengths", 3, 300, 333, 2, 1, H, U, U, 0, len},
      {"lengths causal", 3, 257, 200, 2, 2, H, U, 0, 0, len},
      {"segments causal", 2, 512, 512, 2, 1, H, U, 0, 0, seg},
      {"segments T!=S window", 2, 300, 467, 2, 2, H, 64, 32, 0, seg},
      {"random segs + lengths", 3, 200, 190, 2, 2, H, U, U, 0, rseg},
      {"bias [B,N,T,S] window", 2, 200, 300, 2, 1, H, 50, 20, 0, bias},
      {"bias [1,N,T,S] causal", 3, 160, 160, 2, 2, H, U, 0, 0, bias_b},
      {"bias [B,1,1,S] gqa", 2, 130, 250, 4, 2, H, U, U, 0, bias_s},
      {"mask causal", 2, 300, 300, 2, 1, H, U, 0, 0, mask},
      {"softcap", 2, 256, 200, 2, 2, H, U, U, 0, cap},
      {"all extras gqa window", 3, 333, 300, 4, 2, H - 8, 100, 50, 8, all},
  };
  int fails = 0;
  for (size_t x = 0; x < cases.size(); ++x) {
    if (quick && x != 2 && x != 10) continue;
    fails += !run_case<E, L>(cases[x], cfg_name);
  }
  std::printf("CHECKCFG %s extras %s hdim %d: %d failing\n", cfg_name,
              std::is_same_v<E, bf16> ? "bf16" : "fp16", H, fails);
  return fails;
}

// ------------------------------------------------------------------------------------
// Timing at the benchmark shapes.

__global__ void fill_normal_bf16(bf16* x, size_t n, uint64_t seed) {
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < n; idx += size_t(gridDim.x) * blockDim.x) {
    uint64_t h = (idx + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    h ^= h >> 31; h *= 0xBF58476D1CE4E5B9ull; h ^= h >> 29; h *= 0x94D049BB133111EBull; h ^= h >> 32;
    const float u1 = ((h & 0xFFFFFF) + 1) / 16777217.f, u2 = ((h >> 24) & 0xFFFFFF) / 16777216.f;
    x[idx] = bf16(sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

// lse ~ log(visible keys) + 0.5 (q.k * scale ~ N(0, 1)), so P has realistic magnitudes.
__global__ void fill_stats(float* lse, float* delta, int rows, int t, int s, bool causal) {
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < rows; idx += gridDim.x * blockDim.x) {
    const int i = idx % t;
    const int cnt = causal ? min(i + 1, s) : s;
    lse[idx] = logf(float(cnt)) + 0.5f;
    delta[idx] = 0.1f * cospif(idx * 0.37f);
  }
}

// The timing problems' buffers: bf16 q, k, v, dout, dk, dv and float dq of `elems`
// elements, float lse and delta of `rows`; inputs random, dq zeroed; two timing events.
struct TimingBuffers {
  bf16 *q, *k, *v, *dout, *dk, *dv;
  float *dq, *lse, *delta;
  cudaEvent_t e0, e1;

  TimingBuffers(size_t elems, size_t rows, uint64_t seed) {
    for (bf16** ptr : {&q, &k, &v, &dout, &dk, &dv}) CK(cudaMalloc(ptr, elems * sizeof(bf16)));
    CK(cudaMalloc(&dq, elems * sizeof(float)));
    CK(cudaMalloc(&lse, rows * sizeof(float)));
    CK(cudaMalloc(&delta, rows * sizeof(float)));
    for (bf16* ptr : {q, k, v, dout}) fill_normal_bf16<<<1024, 256>>>(ptr, elems, seed++);
    CK(cudaMemset(dq, 0, elems * sizeof(float)));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
  }
  TimingBuffers(const TimingBuffers&) = delete;
  TimingBuffers& operator=(const TimingBuffers&) = delete;
  ~TimingBuffers() {
    for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)dout, (void*)dk, (void*)dv,
                      (void*)dq, (void*)lse, (void*)delta})
      CK(cudaFree(ptr));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
  }

  // A dense [b, t, n, h] self-attention problem (S = T, K = N) on these buffers, no window.
  BwdParams params(int b, int t, int n, int h) const {
    BwdParams p{};
    p.q = q; p.k = k; p.v = v; p.dout = dout; p.dq_accum = dq; p.dk = dk; p.dv = dv;
    p.lse = lse; p.delta = delta;
    const int64_t rs = int64_t{n} * h;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.do_batch_stride = t * rs;
    p.dq_batch_stride = p.dk_batch_stride = p.dv_batch_stride = t * rs;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = p.do_row_stride = rs;
    p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = rs;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.do_head_stride = h;
    p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = h;
    p.b = b; p.t = t; p.s = t; p.n = n; p.n_kv = n; p.h = h; p.hv = h; p.group = 1;
    p.scale = 1.f / std::sqrt(float(h));
    p.scale_log2 = p.scale * 1.4426950408889634f;
    p.window_left = p.window_right = kUnbounded;
    p.dtype = jax_flash::DType::kBFloat16;
    return p;
  }

  // ms per launch over 10 back-to-back launches, 5 repeats, sorted (the median is [2]),
  // after two warm-up launches.
  template <typename Launch>
  std::vector<float> time(Launch launch) const {
    for (int w = 0; w < 2; ++w) CK(launch());
    CK(cudaDeviceSynchronize());
    std::vector<float> ms;
    for (int rep = 0; rep < 5; ++rep) {
      CK(cudaEventRecord(e0));
      for (int it = 0; it < 10; ++it) CK(launch());
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float elapsed;
      CK(cudaEventElapsedTime(&elapsed, e0, e1));
      ms.push_back(elapsed / 10);
    }
    std::sort(ms.begin(), ms.end());
    return ms;
  }
};

// once: a single launch per shape and no timing (for a profiler).
// order: -1 the launcher's default, else that BwdOrder for every shape.
template <typename Cfg>
void time_config(const char* cfg_name, const std::vector<int>& seqlens, bool once = false,
                 int order = -1) {
  constexpr int H = Cfg::kHeadDim;
  const size_t tokens = 16384, hidden = 2048;
  const TimingBuffers buf(tokens * hidden, tokens * (hidden / H), 1);
  int ctas = 0;
  auto* kernel = jax_flash::sm80::bwd::bwd_kernel<bf16, Cfg, jax_flash::sm80::bwd::kNoExtras,
                                                   BwdOrder::kKeysFastest>;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kernel, Cfg::kThreads, Cfg::kSmemBytes));
  std::printf("config %s: %d threads, %d B smem, %d CTA(s)/SM\n", cfg_name, Cfg::kThreads,
              Cfg::kSmemBytes, ctas);
  for (int causal = 0; causal < 2; ++causal) {
    for (int t : seqlens) {
      const int b = tokens / t, n = hidden / H;
      BwdParams p = buf.params(b, t, n, H);
      p.window_right = causal ? 0 : kUnbounded;
      p.is_causal = causal;
      fill_stats<<<256, 256>>>(buf.lse, buf.delta, b * n * t, t, t, causal);
      CK(cudaGetLastError());
      auto launch = [&]() {
        return order < 0 ? launch_bwd<bf16, Cfg>(p, 0) : launch_bwd<bf16, Cfg>(p, 0, BwdOrder(order));
      };
      if (once) {
        CK(launch());
        CK(cudaDeviceSynchronize());
        continue;
      }
      const std::vector<float> ms = buf.time(launch);
      const double flops = 10.0 * b * n * double(t) * t * H * (causal ? 0.5 : 1.0);
      std::printf("TIME %-24s hdim %3d seqlen %5d %-10s %8.3f ms %6.1f TFLOP/s (spread %.1f%%)\n",
                  cfg_name, H, t, causal ? "causal" : "noncausal", ms[2], flops / (ms[2] * 1e-3) / 1e12,
                  100.0 * (ms[4] - ms[0]) / ms[2]);
    }
  }
}

// Issue 5's performance points (hdim 128, seqlen 16k, 16 heads): a sliding window of 1024
// keys and 8 packed documents of 2k, against dense, in TFLOP/s over the visible pairs.
void time_extras() {
  constexpr int H = 128;
  const int t = 16384, n = 2048 / H;
  const TimingBuffers buf(size_t(t) * n * H, size_t(t) * n, 7);
  fill_stats<<<256, 256>>>(buf.lse, buf.delta, n * t, t, 2048, false);
  std::vector<int32_t> ids(t);
  for (int i = 0; i < t; ++i) ids[i] = i / 2048;
  Uploads up;
  const int32_t* seg = up(ids);
  const int32_t* range = up(chunk_ranges(ids, 1, t, ids, t));  // both sides
  struct Point { const char* name; int wl, wr; bool segments; double pairs; };
  const double tt = double(t) * t;
  const Point points[] = {
      {"dense", U, U, false, tt},
      {"dense causal", U, 0, false, tt / 2},
      {"window 1024 (1023, 0)", 1023, 0, false, 1024.0 * t - 1023.0 * 1024 / 2},
      {"8 docs of 2k", U, U, true, tt / 8},
      {"8 docs of 2k causal", U, 0, true, tt / 16},
  };
  for (const Point& pt : points) {
    BwdParams p = buf.params(1, t, n, H);
    p.window_left = pt.wl;
    p.window_right = pt.wr;
    p.is_causal = pt.wl == U && pt.wr == 0;
    if (pt.segments) {
      p.extra.q_segment_ids = p.extra.kv_segment_ids = seg;
      p.extra.q_segment_range = p.extra.kv_segment_range = range;
      p.extra.q_chunks = p.extra.kv_chunks = t / jax_flash::kSegmentChunk;
    }
    const std::vector<float> ms = buf.time([&]() { return run_bwd<bf16, H>(p, 0); });
    const double flops = 10.0 * n * pt.pairs * H;
    std::printf("TIMEX hdim %d seqlen %d %-24s %8.3f ms %6.1f TFLOP/s over visible pairs\n", H, t,
                pt.name, ms[2], flops / (ms[2] * 1e-3) / 1e12);
  }
}

// Alternative tile configurations timed beside the defaults.
using H64_M64 = BwdConfig<64, 64, 128, 8, 2, 4, 2, true>;

// Variants of the defaults (bits: 1 TMA dQ, 2 late exponentials, 4 rotated start).
template <int H, int kBits>
using Variant = std::conditional_t<
    H == 64,
    BwdConfig<64, 128, 128, 8, 2, 4, 4, true, 1, 1, (kBits & 1) != 0, (kBits & 2) != 0,
              (kBits & 4) != 0>,
    BwdConfig<128, 64, 128, 8, 2, 4, 2, true, 1, 1, (kBits & 1) != 0, (kBits & 2) != 0,
              (kBits & 4) != 0>>;

template <int H, int kBits>
int check_variant() {
  char name[32];
  std::snprintf(name, sizeof name, "h%d var%d", H, kBits);
  // The TMA paths get every case (and the extras); the others share the checked code: the
  // quick set.
  const bool quick = (kBits & 1) == 0;
  int fails = run_cases<bf16, ByConfig<Variant<H, kBits>>>(name, quick);
  if (!quick) fails += run_extra_cases<bf16, ByConfig<Variant<H, kBits>>>(name, false);
  return fails;
}

// One variant (a process each, so that a crash or hang stays with its variant): its checks,
// then its timings at the given sequence lengths.
template <int H, int kBits>
int run_variant(const std::vector<int>& seqlens) {
  const int fails = check_variant<H, kBits>();
  char name[32];
  std::snprintf(name, sizeof name, "h%d var%d", H, kBits);
  if (fails == 0) time_config<Variant<H, kBits>>(name, seqlens);
  return fails;
}

template <int H, int... kBits>
int run_variant_bits(int bits, const std::vector<int>& seqlens,
                     std::integer_sequence<int, kBits...>) {
  int fails = -1;
  ((bits == kBits ? (fails = run_variant<H, kBits>(seqlens), 0) : 0), ...);
  return fails;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // keep lines if the run is cut off
  const std::string mode = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, smem opt-in %zu KB\n", prop.name, prop.multiProcessorCount,
              prop.sharedMemPerBlockOptin / 1024);
  int fails = 0;
  if (mode == "all" || mode == "check" || mode == "quick") {
    const bool quick = mode == "quick";
    fails += run_cases<bf16, ByDispatch<64>>("dispatch", quick);
    fails += run_cases<bf16, ByDispatch<128>>("dispatch", quick);
    fails += run_cases<bf16, ByDispatch<256>>("dispatch", quick);
    fails += run_cases<bf16, ByConfig<BwdTraits<64>::Config>>("portable", quick);
    fails += run_cases<bf16, ByConfig<BwdTraits<128>::Config>>("portable", quick);
    fails += run_extra_cases<bf16, ByDispatch<64>>("dispatch", quick);
    fails += run_extra_cases<bf16, ByDispatch<128>>("dispatch", quick);
    fails += run_extra_cases<bf16, ByDispatch<256>>("dispatch", quick);
    fails += run_extra_cases<bf16, ByConfig<BwdTraits<128>::Config>>("portable", quick);
    if (!quick) {
      fails += run_cases<fp16, ByDispatch<64>>("dispatch", true);
      fails += run_cases<fp16, ByDispatch<128>>("dispatch", true);
      fails += run_cases<fp16, ByDispatch<256>>("dispatch", true);
      fails += run_extra_cases<fp16, ByDispatch<128>>("dispatch", true);
      fails += run_cases<bf16, ByConfig<H64_M64>>("h64 Br64", true);
      // Both CTA orders on every case (the default picks one by the window; hdim 64 has
      // only keys fastest).
      fails += run_cases<bf16, ByConfig<BwdTraits<128>::Sm90Config, 0>>("h128 keys fastest", false);
      fails += run_cases<bf16, ByConfig<BwdTraits<128>::Sm90Config, 1>>("h128 heavy first", false);
      fails += run_extra_cases<bf16, ByConfig<BwdTraits<128>::Sm90Config, 0>>("h128 keys fastest",
                                                                              false);
      fails += run_extra_cases<bf16, ByConfig<BwdTraits<128>::Sm90Config, 1>>("h128 heavy first",
                                                                              false);
    }
    std::printf("CHECK %s: %d failing cases\n", fails ? "FAILED" : "passed", fails);
  }
  if (mode == "variant" && argc == 4) {  // variant HDIM BITS: check, then time if correct
    const int h = std::atoi(argv[2]), bits = std::atoi(argv[3]);
    const std::vector<int> seqlens = {2048, 8192, 16384};
    const auto all = std::make_integer_sequence<int, 8>{};
    fails = h == 64 ? run_variant_bits<64>(bits, seqlens, all)
                    : h == 128 ? run_variant_bits<128>(bits, seqlens, all) : -1;
    if (fails < 0) std::printf("no variant h%d var%d\n", h, bits);
  }
  if (mode == "all" || mode == "time") {
    const std::vector<int> seqlens = {1024, 2048, 4096, 8192, 16384};
    time_config<BwdTraits<64>::Sm90Config>("h64 sm90 default", seqlens);
    time_config<BwdTraits<128>::Sm90Config>("h128 sm90 default", seqlens);
    time_config<BwdTraits<256>::Config>("h256 default 64x64", {1024, 4096, 16384});
  }
  if (mode == "all" || mode == "time" || mode == "timex") time_extras();
  if (mode == "order") {  // both CTA orders at the benchmark shapes
    const std::vector<int> seqlens = {2048, 4096, 8192, 16384};
    time_config<BwdTraits<128>::Sm90Config>("h128 keys fastest", seqlens, false, 0);
    time_config<BwdTraits<128>::Sm90Config>("h128 heavy first", seqlens, false, 1);
    time_config<BwdTraits<256>::Config>("h256 keys fastest", {4096, 16384}, false, 0);
    time_config<BwdTraits<256>::Config>("h256 heavy first", {4096, 16384}, false, 1);
  }
  if (mode == "profile") {  // one shape per head dim, for ncu
    time_config<BwdTraits<128>::Sm90Config>("h128 sm90 default", {16384}, true);
    time_config<BwdTraits<64>::Sm90Config>("h64 sm90 default", {16384}, true);
  }
  return fails ? 1 : 0;
}
