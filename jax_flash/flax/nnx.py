"""Flax NNX multi-head attention on jax_flash.

`MultiHeadAttention` subclasses `flax.nnx.MultiHeadAttention`: Flax's constructor builds
the parameters (query/key/value/out LinearGeneral, query_ln/key_ln with normalize_qk), so
the state tree is Flax's and a Flax checkpoint loads unchanged. Added:

  num_kv_heads       grouped-query attention (also on Flax versions whose module lacks
                     it). Only when it differs from num_heads does the tree change:
                     key/value kernels become [D, num_kv_heads, H].
  is_causal          causal self-attention without a dense mask (also a call argument).
  local_window_size  sliding window, int or (left, right).
  softcap            logit soft-capping.
  call arguments     q_segment_ids / kv_segment_ids (packed documents),
                     query_seq_lengths / key_value_seq_lengths (padding).

Decoding (decode=True, after `init_cache`) keeps Flax's cache but passes the cache fill
level as key_value_seq_lengths instead of a dense mask; is_causal is implied there.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
from flax import nnx
from jax import lax

from ._adapter import call_attention_fn, default_kv_inputs, dot_product_attention

# Flax added num_kv_heads (and in_kv_features) to nnx.MultiHeadAttention in 0.11/0.12.
_FLAX_HAS_GQA = "num_kv_heads" in inspect.signature(nnx.MultiHeadAttention.__init__).parameters


class MultiHeadAttention(nnx.MultiHeadAttention):
  """`flax.nnx.MultiHeadAttention` computed with jax_flash (see module doc).

  Same arguments as Flax's module (extra ones pass through to it), plus is_causal,
  local_window_size and softcap. attention_fn defaults to
  `jax_flash.flax.dot_product_attention`.
  """

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None,
               in_kv_features: int | None = None, *, is_causal: bool = False,
               local_window_size=None, softcap: float | None = None,
               attention_fn=dot_product_attention, rngs: nnx.Rngs, **kwargs):
    if num_kv_heads is not None and (num_kv_heads <= 0 or num_heads % num_kv_heads):
      raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                       f"({num_kv_heads})")
    if in_kv_features is not None:
      kwargs["in_kv_features"] = in_kv_features
    if _FLAX_HAS_GQA:
      kwargs["num_kv_heads"] = num_kv_heads
    super().__init__(num_heads, in_features, qkv_features, out_features,
                     attention_fn=attention_fn, rngs=rngs, **kwargs)
    self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if not _FLAX_HAS_GQA and self.num_kv_heads != num_heads:
      self.key, self.value = (self._kv_projection(kwargs, rngs) for _ in range(2))
    self.is_causal = is_causal
    self.local_window_size = local_window_size
    self.softcap = softcap

  def _kv_projection(self, kwargs, rngs):
    """A key/value projection with num_kv_heads heads, for Flax versions without GQA."""
    return nnx.LinearGeneral(
        in_features=self.in_features, out_features=(self.num_kv_heads, self.head_dim),
        dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
        kernel_init=kwargs.get("kernel_init", nnx.initializers.lecun_normal()),
        bias_init=kwargs.get("bias_init", nnx.initializers.zeros_init()),
        precision=self.precision, rngs=rngs)

  def init_cache(self, input_shape, dtype=jnp.float32):
    """Allocate the decode cache: Flax's variables, shaped with num_kv_heads."""
    shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
    self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
    self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
    self.cache_index = nnx.Cache(jnp.array(0, dtype=jnp.int32))

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None,
               deterministic=None, rngs=None, sow_weights=False, decode=None,
               is_causal=None, q_segment_ids=None, kv_segment_ids=None,
               query_seq_lengths=None, key_value_seq_lengths=None, out_sharding=None,
               qkv_sharding=None):
    """inputs_q [batch..., T, in_features], inputs_k/inputs_v [batch..., S, D_kv]
    (default: self-attention) -> [batch..., T, out_features].

    mask: bool/0-1 broadcastable to [batch..., N, T, S], as in Flax.
    is_causal: overrides the constructor's value for this call.
    q_segment_ids [batch..., T], kv_segment_ids [batch..., S] (defaults to
    q_segment_ids): int; a query attends only keys of its segment.
    query_seq_lengths, key_value_seq_lengths: int [batch...]; later positions are
    padding.
    out_sharding, qkv_sharding: as in Flax (versions that have them).
    """
    inputs_k, inputs_v = default_kv_inputs(inputs_q, inputs_k, inputs_v)
    if inputs_q.shape[-1] != self.in_features:
      raise ValueError(f"inputs_q has {inputs_q.shape[-1]} features, but the module was "
                       f"built with in_features={self.in_features}")

    # Pass the sharding arguments only when set: older Flax layers do not take them.
    qkv_kw = {} if qkv_sharding is None else {"out_sharding": qkv_sharding}
    out_kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    query = self.query(inputs_q, **qkv_kw)
    key = self.key(inputs_k, **qkv_kw)
    value = self.value(inputs_v, **qkv_kw)
    if self.normalize_qk:
      query, key = self.query_ln(query), self.key_ln(key)

    is_causal = self.is_causal if is_causal is None else is_causal
    if decode if decode is not None else self.decode:
      if self.local_window_size is not None:
        raise ValueError("local_window_size is not supported with decode=True")
      key, value, filled = self._decode_step(key, value)
      # One query at position `filled - 1` sees cache slots [0, filled): causal by
      # construction; the top-left is_causal alignment would wrongly hide the rest.
      is_causal = False
      key_value_seq_lengths = (filled if key_value_seq_lengths is None
                               else jnp.minimum(key_value_seq_lengths, filled))

    deterministic, dropout_rng = self._dropout(deterministic, rngs)
    if q_segment_ids is not None and kv_segment_ids is None:
      kv_segment_ids = q_segment_ids
    flax_kwargs = dict(mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                       broadcast_dropout=self.broadcast_dropout,
                       deterministic=deterministic, dtype=self.dtype,
                       precision=self.precision, module=self if sow_weights else None)
    extras = dict(is_causal=is_causal, local_window_size=self.local_window_size,
                  softcap=self.softcap, q_segment_ids=q_segment_ids,
                  kv_segment_ids=kv_segment_ids, query_seq_lengths=query_seq_lengths,
                  key_value_seq_lengths=key_value_seq_lengths)
    x = call_attention_fn(self.attention_fn, query, key, value, flax_kwargs, extras)
    return self.out(x, **out_kw)

  def _decode_step(self, key, value):
    """Write one position into the cache; return (cache key, cache value, filled)."""
    if self.cached_key is None or self.cached_value is None or self.cache_index is None:
      raise ValueError("decode=True needs the cache: call init_cache(input_shape) first")
    *batch, _, n_kv, head_dim = self.cached_key[...].shape
    if key.shape != tuple(batch) + (1, n_kv, head_dim):
      raise ValueError(f"decode=True takes one position per call: key of shape "
                       f"{tuple(batch) + (1, n_kv, head_dim)} expected (from the cache), "
                       f"got {key.shape}")
    index = self.cache_index[...]
    start = (0,) * len(batch) + (index, 0, 0)
    self.cached_key[...] = lax.dynamic_update_slice(self.cached_key[...], key, start)
    self.cached_value[...] = lax.dynamic_update_slice(self.cached_value[...], value, start)
    self.cache_index[...] = index + 1
    filled = jnp.broadcast_to(index + 1, tuple(batch)).astype(jnp.int32)
    return self.cached_key[...], self.cached_value[...], filled

  def _dropout(self, deterministic, rngs):
    """(deterministic, dropout_rng) resolved as Flax does; dropout itself is up to
    attention_fn (jax_flash's raises when it would be active)."""
    if self.dropout_rate <= 0.0:
      return True, None
    deterministic = self.deterministic if deterministic is None else deterministic
    if deterministic is None:
      raise ValueError("dropout_rate > 0 needs `deterministic`, as a call argument or "
                       "a constructor argument")
    if deterministic:
      return True, None
    rngs = self.rngs if rngs is None else rngs
    if rngs is None:
      raise ValueError("dropout needs `rngs`: pass rngs to the call (the module was "
                       "built without keeping them)")
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs.dropout
    return False, rngs()
