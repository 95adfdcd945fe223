"""`jax_flash.attention`: the public call.

Flow: validate and canonicalize (`_validate`) -> choose the implementation (here) ->
the custom_vjp core (`_vjp`) -> partitioned per-shard call (`_partition`) ->
`_xla` (pure JAX) or `_cuda` (XLA FFI -> csrc/ffi -> csrc/dispatch -> kernel).
"""

from __future__ import annotations

import logging

import jax

from . import _validate
from ._vjp import attention_core

logger = logging.getLogger("jax_flash")
_logged_reasons: set[str] = set()


def _kernel_reason(call) -> str | None:
  """None when the CUDA kernels can run this call, else why not."""
  try:
    from . import _cuda
  except ImportError as e:  # a source checkout without the CUDA glue
    return f"the CUDA extension cannot be imported ({e})"
  reason = _cuda.kernels_available()
  if reason is None:
    reason = _cuda.unsupported_reason(call.q, call.k, call.v, call.extras, call.cfg)
  return reason


def _choose_implementation(implementation, call) -> str:
  if implementation == "xla":
    return "xla"
  reason = _kernel_reason(call)
  if reason is None:
    return "cuda"
  if implementation == "cuda":
    raise ValueError(f"implementation='cuda' cannot run this call: {reason}")
  if jax.default_backend() == "gpu" and reason not in _logged_reasons:
    _logged_reasons.add(reason)
    logger.info("jax_flash: using the 'xla' implementation: %s", reason)
  return "xla"


def attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
              local_window_size=None, query_seq_lengths=None, key_value_seq_lengths=None,
              q_segment_ids=None, kv_segment_ids=None, softcap=None, return_lse=False,
              implementation=None):
  """Exact softmax attention, computed tile by tile (FlashAttention).

  Arguments follow `jax.nn.dot_product_attention` (same shapes, same semantics):

    query [B, T, N, H], key [B, S, K, H], value [B, S, K, Hv] with N % K == 0
    (MHA, GQA, MQA); any number of leading batch dims (or none).
    bias: additive, broadcastable to [B, N, T, S]; differentiable.
    mask: boolean, broadcastable to [B, N, T, S]; True = attend.
    scale: multiplies q.k; default 1/sqrt(H).
    is_causal: query i attends keys j <= i (top-left aligned when T != S).
    local_window_size: int w or (left, right): query i attends keys in
      [i - left, i + right]; None on a side means unbounded.
    query_seq_lengths, key_value_seq_lengths: int [B]; positions at or past the length
      are padding.
    q_segment_ids [B, T], kv_segment_ids [B, S]: int; a query attends only keys of the
      same segment (packed documents).
    softcap: logits -> softcap * tanh(logits / softcap), applied before bias and masks.
    return_lse: also return the log-sum-exp of the logits, float32 [B, N, T].
    implementation: None (the CUDA kernels where they support the call, else "xla"),
      "cuda" (raise if the kernels cannot run it), or "xla" (pure JAX, O(N) memory).

  Rows that attend to nothing give output 0 and lse = -inf.

  Returns:
    [B, T, N, Hv] in query's dtype, or (output, lse) when return_lse.
  """
  call = _validate.canonicalize(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      local_window_size=local_window_size, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, q_segment_ids=q_segment_ids,
      kv_segment_ids=kv_segment_ids, softcap=softcap, return_lse=return_lse,
      implementation=implementation)
  impl = _choose_implementation(implementation, call)
  out, lse = attention_core(call.q, call.k, call.v, call.extras, call.cfg, impl)
  return call.result(out, lse)
