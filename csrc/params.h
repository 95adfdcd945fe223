// Plain parameter structs shared by the FFI handlers and every kernel.
// No XLA FFI types below this line: handlers decode buffers and attributes into
// these structs, kernels read nothing else.
//
// Dimension legend (same letters as jax.nn.dot_product_attention):
//   B batch, T query length, S key/value length, N query heads,
//   K key/value heads (N % K == 0, G = N / K queries share one K/V head),
//   H head dim of q and k, Hv head dim of v and o.
// Tensors are row-major [B, T, N, H] style; strides are in elements and
// 64-bit so tensors over 2^31 elements index correctly.
#pragma once

#include <cstdint>

namespace jax_flash {

enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1 };

// A key j is visible from query i iff  i - window_left <= j <= i + window_right
// (top-left aligned, as jax.nn.dot_product_attention; causal is window_right = 0).
// kUnbounded on either side means no limit on that side.
inline constexpr int32_t kUnbounded = 1 << 30;

// Segment ids are summarized per chunk of kSegmentChunk rows (keys) as (min id, max id, lo, hi),
// computed by XLA before the call (jax_flash/_cuda.py segment_ranges): [lo, hi) are the chunks
// of the other side (keys for a query chunk, queries for a key chunk) that may hold an id in
// [min id, max id]; none outside does. Exact for sorted ids (packed documents), a superset for
// any ids. A kernel clips its walk to [lo, hi) and tests whether a (query tile, key tile) pair
// can hold a matching pair from the (min, max) ids, skipping it if not.
// Every kernel tile edge is a multiple of 16.
inline constexpr int kSegmentChunk = 16;
// Chunks of a side of `len` rows (keys): the summaries' leading size.
// (Device code calls it too, under nvcc's --expt-relaxed-constexpr.)
inline constexpr int64_t segment_chunks(int64_t len) {
  return (len + kSegmentChunk - 1) / kSegmentChunk;
}

// The optional inputs of jax_flash._config.Extras and softcap; nullptr / 0 where absent.
// Semantics (the "xla" path's, jax_flash/_xla.py): logit = scale * q.k, then
// softcap * tanh(logit / softcap), then + bias; a pair is hidden (logit -inf) by the window,
// by j >= kv_seqlen[b], by i >= q_seqlen[b], by unequal segment ids, or by mask == false.
struct ExtraParams {
  const int32_t* q_seqlen;          // [B]
  const int32_t* kv_seqlen;         // [B]
  const int32_t* q_segment_ids;     // [B, T]  (both segment arrays or neither)
  const int32_t* kv_segment_ids;    // [B, S]
  const int32_t* q_segment_range;   // [B, q_chunks, 4] (min id, max id, lo, hi) per chunk,
  const int32_t* kv_segment_range;  // [B, kv_chunks, 4]   16-byte aligned (int4 reads)
  int32_t q_chunks, kv_chunks;      // ceil(T / kSegmentChunk), ceil(S / kSegmentChunk)
  const float* bias;                // [B|1, N|1, T|1, S|1] float32
  const uint8_t* mask;              // [B|1, N|1, T|1, S|1] bool (1 byte), false hides
  int64_t bias_stride[4];           // b, n, t, s strides in elements; 0 on broadcast dims
  int64_t mask_stride[4];
  float softcap;                    // 0 = off
  // Any of bias, mask, softcap: every tile needs the per-element path, not just edge tiles.
  bool per_element;
};

struct AttnParams {
  const void* q;  // [B, T, N, H]
  const void* k;  // [B, S, K, H]
  const void* v;  // [B, S, K, Hv]
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;

  int32_t b, t, s, n, n_kv, h, hv;
  int32_t group;  // n / n_kv

  float scale;       // multiplies q . k
  float scale_log2;  // scale * log2(e): softmax runs in exp2

  int32_t window_left;   // kUnbounded or >= 0
  int32_t window_right;  // kUnbounded or >= 0; 0 when causal
  bool is_causal;        // window_right == 0 and window_left == kUnbounded

  ExtraParams extra;

  DType dtype;
  int32_t num_sms;  // multiprocessors of the device (persistent schedulers)
};

struct FwdParams : AttnParams {
  void* o;     // [B, T, N, Hv], dtype of q
  float* lse;  // [B, N, T], natural log of sum(exp(logit)) over visible keys; -inf for empty rows
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int* tile_counter;  // 4 bytes of device scratch for the sm90 kernel's dynamic tile order
                      // (sm90/fwd_launch.cuh tile_order; its launcher zeroes it)
};

struct BwdParams : AttnParams {
  const void* dout;    // [B, T, N, Hv]
  const float* lse;    // [B, N, T] from the forward pass
  const float* delta;  // [B, N, T] rowsum(dO * O) (minus the lse cotangent), computed by XLA
  float* dq_accum;     // [B, T, N, H] float32, zeroed by the handler, accumulated atomically
  void* dk;            // [B, S, K, H], dtype of k, summed over the G query heads of a group
  void* dv;            // [B, S, K, Hv]
  float* dbias;        // bias's shape, float32, zeroed by the handler, accumulated atomically
                       // (broadcast dims sum); nullptr when there is no bias
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
};

}  // namespace jax_flash
