"""`dot_product_attention`: `jax_flash.attention` behind Flax's `attention_fn` convention.

Flax's attention modules call `attention_fn(query, key, value, **kwargs)`:

  linen.MultiHeadDotProductAttention: mask, dropout_rng, dropout_rate, broadcast_dropout,
    deterministic, dtype, precision, force_fp32_for_softmax, qk_attn_weights_einsum,
    attn_weights_value_einsum, and module (only with sow_weights=True); it keeps only the
    names that appear in the function's signature.
  nnx.MultiHeadAttention: mask, dropout_rng, dropout_rate, broadcast_dropout,
    deterministic, dtype, precision, module (None unless sow_weights=True) and, in newer
    Flax, is_causal; all of them, unfiltered.

So the signature below lists every one of those names in Flax's own positional order,
and adds jax_flash's extras as keyword-only arguments. Nothing here imports Flax.

Shapes: query [batch..., T, N, H], key [batch..., S, K, H], value [batch..., S, K, Hv];
bias and mask broadcastable to [batch..., N, T, S].
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp

from ..api import attention

# The keyword arguments Flax's modules pass to every attention_fn.
FLAX_KWARGS = ("mask", "dropout_rng", "dropout_rate", "broadcast_dropout", "deterministic",
               "dtype", "precision", "module", "force_fp32_for_softmax",
               "qk_attn_weights_einsum", "attn_weights_value_einsum")


def dot_product_attention(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                          dropout_rng=None, dropout_rate=0.0, deterministic=False,
                          dtype=None, precision=None, module=None,
                          force_fp32_for_softmax=False, qk_attn_weights_einsum=None,
                          attn_weights_value_einsum=None, is_causal=False, *,
                          local_window_size=None, q_segment_ids=None, kv_segment_ids=None,
                          query_seq_lengths=None, key_value_seq_lengths=None, softcap=None,
                          scale=None, implementation=None):
  """Drop-in `attention_fn` for `flax.linen.MultiHeadDotProductAttention` and
  `flax.nnx.MultiHeadAttention`, computed by `jax_flash.attention`.

  Same arguments and result as Flax's `dot_product_attention`, with these differences:

    mask: any dtype; nonzero = attend (Flax's `make_attention_mask` gives float32).
    dropout: not supported: raises ValueError when it would be active
      (dropout_rate > 0 and not deterministic). Inactive dropout arguments are ignored.
    module (Flax's sow_weights=True): raises ValueError: the attention weights are
      never formed, which is the point of FlashAttention.
    precision, force_fp32_for_softmax: ignored; jax_flash always computes the softmax
      and accumulates in float32.
    qk_attn_weights_einsum, attn_weights_value_einsum: must be None (custom einsums
      cannot run inside the fused kernel).
    Query rows whose mask is all False give 0 here; Flax gives the mean of all values
      (its masked logits are a large finite negative number).

  Also accepts, beyond Flax: GQA/MQA (key/value with fewer heads than query), and the
  keyword-only `jax_flash.attention` features is_causal, local_window_size, segment
  ids, sequence lengths, softcap, scale and implementation, which reach the fast
  kernel paths without a dense mask.
  """
  if module is not None:
    raise ValueError(
        "jax_flash.flax.dot_product_attention cannot sow attention weights "
        "(sow_weights=True): FlashAttention never forms them. Call the module with "
        "sow_weights=False, or use flax's dot_product_attention to inspect weights.")
  if dropout_rate and not deterministic:
    raise ValueError(
        f"jax_flash does not implement attention dropout, but it is active here "
        f"(dropout_rate={dropout_rate!r}, deterministic={deterministic!r}). Set "
        "dropout_rate=0.0, or deterministic=True for evaluation.")
  for fn, name in ((qk_attn_weights_einsum, "qk_attn_weights_einsum"),
                   (attn_weights_value_einsum, "attn_weights_value_einsum")):
    if fn is not None:
      raise ValueError(f"{name} must be None for jax_flash (got {fn!r}): custom einsums "
                       "cannot run inside the fused attention kernel")

  query, key, value = (jnp.asarray(x) for x in (query, key, value))
  dtype = jnp.result_type(query, key, value) if dtype is None else jnp.dtype(dtype)
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
      mask = mask != 0
  return attention(query, key, value, bias, mask, scale=scale, is_causal=is_causal,
                   local_window_size=local_window_size,
                   query_seq_lengths=query_seq_lengths,
                   key_value_seq_lengths=key_value_seq_lengths,
                   q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                   softcap=softcap, implementation=implementation)


def default_kv_inputs(inputs_q, inputs_k, inputs_v):
  """Flax's convention: keys default to the queries, values to the keys."""
  if inputs_k is None:
    if inputs_v is not None:
      raise ValueError("inputs_k must be given when inputs_v is (pass the same array "
                       "as inputs_k to use it for both)")
    inputs_k = inputs_q
  return inputs_k, inputs_k if inputs_v is None else inputs_v


def call_attention_fn(fn, query, key, value, flax_kwargs: dict, extras: dict):
  """Call a module's attention_fn the way Flax does, plus jax_flash extras.

  flax_kwargs (the FLAX_KWARGS names) are filtered by fn's signature, as linen does, so
  Flax's own attention functions still work in our modules. extras (is_causal, segment
  ids, ...) are passed only when set, and then fn must accept them.
  """
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):  # builtins or C callables without a signature
    params = None
  takes_any = params is None or any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  kwargs = {k: v for k, v in flax_kwargs.items() if takes_any or k in params}
  kwargs.update({k: v for k, v in extras.items() if v is not None and v is not False})
  return fn(query, key, value, **kwargs)
