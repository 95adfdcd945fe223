"""Flax linen multi-head attention on jax_flash.

`MultiHeadDotProductAttention` (alias `MultiHeadAttention`) subclasses Flax's module of
the same name: the same constructor fields, the same parameters
(query/key/value/out DenseGeneral, query_ln/key_ln with normalize_qk) and the same
"cache" variables with decode=True, so a Flax checkpoint loads unchanged. Added:

  num_kv_heads       grouped-query attention. Only when it differs from num_heads does
                     the tree change: key/value kernels become [D, num_kv_heads, H].
  is_causal          causal self-attention without a dense mask.
  local_window_size  sliding window, int or (left, right).
  softcap            logit soft-capping.
  call arguments     q_segment_ids / kv_segment_ids (packed documents),
                     query_seq_lengths / key_value_seq_lengths (padding).

Decoding (decode=True) keeps Flax's cache layout but passes the cache fill level as
key_value_seq_lengths instead of a dense mask; is_causal is implied there.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ._adapter import call_attention_fn, default_kv_inputs, dot_product_attention


class MultiHeadDotProductAttention(nn.MultiHeadDotProductAttention):
  """Flax's `MultiHeadDotProductAttention` computed with jax_flash (see module doc)."""

  attention_fn: Callable[..., Any] = dot_product_attention
  num_kv_heads: int | None = None
  is_causal: bool = False
  local_window_size: Any = None
  softcap: float | None = None

  @nn.compact
  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None,
               deterministic=None, dropout_rng=None, sow_weights=False,
               q_segment_ids=None, kv_segment_ids=None, query_seq_lengths=None,
               key_value_seq_lengths=None):
    """inputs_q [batch..., T, D_q], inputs_k/inputs_v [batch..., S, D_kv] (default:
    self-attention) -> [batch..., T, out_features or D_q].

    mask: bool/0-1 broadcastable to [batch..., N, T, S], as in Flax.
    q_segment_ids [batch..., T], kv_segment_ids [batch..., S] (defaults to
    q_segment_ids): int; a query attends only keys of its segment.
    query_seq_lengths, key_value_seq_lengths: int [batch...]; later positions are
    padding.
    """
    inputs_k, inputs_v = default_kv_inputs(inputs_q, inputs_k, inputs_v)
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    num_kv_heads = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
    if qkv_features % self.num_heads:
      raise ValueError(f"qkv_features ({qkv_features}) must be divisible by num_heads "
                       f"({self.num_heads})")
    if num_kv_heads <= 0 or self.num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                       f"({num_kv_heads})")
    head_dim = qkv_features // self.num_heads

    dense = functools.partial(
        nn.DenseGeneral, axis=-1, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=self.kernel_init, bias_init=self.bias_init, use_bias=self.use_bias,
        precision=self.precision, dot_general=self.qkv_dot_general,
        dot_general_cls=self.qkv_dot_general_cls)
    query = dense(features=(self.num_heads, head_dim), name="query")(inputs_q)
    key = dense(features=(num_kv_heads, head_dim), name="key")(inputs_k)
    value = dense(features=(num_kv_heads, head_dim), name="value")(inputs_v)
    if self.normalize_qk:  # ViT-22B: LayerNorm on q and k per head (no bias)
      norm = functools.partial(nn.LayerNorm, use_bias=False, dtype=self.dtype,
                               param_dtype=self.param_dtype)
      query = norm(name="query_ln")(query)
      key = norm(name="key_ln")(key)

    is_causal = self.is_causal
    if self.decode:
      key, value, filled = self._decode_step(query, key, value)
      if filled is not None:
        if self.local_window_size is not None:
          raise ValueError("local_window_size is not supported with decode=True")
        # One query at position `filled - 1` sees cache slots [0, filled): causal by
        # construction; the top-left is_causal alignment would wrongly hide the rest.
        is_causal = False
        key_value_seq_lengths = (filled if key_value_seq_lengths is None
                                 else jnp.minimum(key_value_seq_lengths, filled))

    if self.dropout_rate > 0.0:
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
      if not deterministic and dropout_rng is None:
        dropout_rng = self.make_rng("dropout")
    else:
      deterministic = True

    if q_segment_ids is not None and kv_segment_ids is None:
      kv_segment_ids = q_segment_ids
    flax_kwargs = dict(mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                       broadcast_dropout=self.broadcast_dropout,
                       deterministic=deterministic, dtype=self.dtype,
                       precision=self.precision)
    if sow_weights:
      flax_kwargs["module"] = self
    extras = dict(is_causal=is_causal, local_window_size=self.local_window_size,
                  softcap=self.softcap, q_segment_ids=q_segment_ids,
                  kv_segment_ids=kv_segment_ids, query_seq_lengths=query_seq_lengths,
                  key_value_seq_lengths=key_value_seq_lengths)
    x = call_attention_fn(self.attention_fn, query, key, value, flax_kwargs, extras)

    return nn.DenseGeneral(
        features=self.out_features or inputs_q.shape[-1], axis=(-2, -1),
        kernel_init=self.out_kernel_init or self.kernel_init,
        bias_init=self.out_bias_init or self.bias_init, use_bias=self.use_bias,
        dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
        dot_general=self.out_dot_general, dot_general_cls=self.out_dot_general_cls,
        name="out")(x)

  def _decode_step(self, query, key, value):
    """Write this step's key/value into the cache (Flax's variable names and layout).

    Returns (key, value, filled): the whole cache and the number of valid slots per
    batch element, or the inputs and None on the call that creates the cache.
    """
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                 value.dtype)
    cache_index = self.variable("cache", "cache_index",
                                lambda: jnp.array(0, dtype=jnp.int32))
    if not initialized:
      return key, value, None
    *batch, _, n_kv, head_dim = cached_key.value.shape
    if key.shape != tuple(batch) + (1, n_kv, head_dim):
      raise ValueError(f"decode=True takes one position per call: key of shape "
                       f"{tuple(batch) + (1, n_kv, head_dim)} expected (from the cache), "
                       f"got {key.shape} (query {query.shape})")
    index = cache_index.value
    start = (0,) * len(batch) + (index, 0, 0)
    cached_key.value = lax.dynamic_update_slice(cached_key.value, key, start)
    cached_value.value = lax.dynamic_update_slice(cached_value.value, value, start)
    cache_index.value = index + 1
    filled = jnp.broadcast_to(index + 1, tuple(batch)).astype(jnp.int32)
    return cached_key.value, cached_value.value, filled


class MultiHeadAttention(MultiHeadDotProductAttention):
  """Alias of `MultiHeadDotProductAttention`, as in Flax: only the default submodule
  name differs (`MultiHeadAttention_0`), which matters for checkpoints."""
