"""Flax integration: jax_flash.flax.dot_product_attention as attention_fn, and the linen and
NNX modules. References are Flax's own attention (independent of jax_flash) and a float64
NumPy attention written here."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_flash
import jax_flash.flax as jf
from jax_flash.flax import dot_product_attention
from jax_flash.flax import nnx as jf_nnx

ATOL = RTOL = 2e-5
B, T, D, NH = 2, 12, 32, 4


def rand(seed, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def padding_mask(lengths, t):
  """Flax-style float32 padding mask [B, 1, T, T] and the valid-query row selector."""
  valid = (jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.float32)
  return nn.make_attention_mask(valid, valid), valid.astype(bool)


def naive(q, k, v, mask=None):
  """float64 NumPy attention; q [B,T,N,H], k/v [B,S,K,H]; rows with no key give 0."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    s = np.where(np.asarray(mask, bool), s, -np.inf)
  m = s.max(-1, keepdims=True)
  p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
  l = p.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p / np.where(l == 0, 1.0, l), v)


def close(a, b, atol=ATOL, rtol=RTOL):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "non-finite values"
  np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)


# -- the attention_fn itself -----------------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "causal", "padding", "bias", "batch_dims"])
def test_attention_fn_matches_flax(case):
  shape = (B, T, NH, 8)
  q, k, v = rand(1, shape), rand(2, shape), rand(3, shape)
  bias = mask = None
  rows = np.ones((B, T), bool)
  if case == "causal":
    mask = nn.make_causal_mask(jnp.ones((B, T)))
  elif case == "padding":
    mask, rows = padding_mask([T, 7], T)
  elif case == "bias":
    bias = rand(4, (B, NH, T, T))
    mask = nn.make_causal_mask(jnp.ones((B, T))).astype(bool)
  elif case == "batch_dims":  # two leading batch dims, mask broadcast over heads
    q, k, v = (x.reshape(1, B, T, NH, 8) for x in (q, k, v))
    mask = nn.make_causal_mask(jnp.ones((1, B, T)))
  want = nn.dot_product_attention(q, k, v, bias, mask)
  got = dot_product_attention(q, k, v, bias, mask)
  assert got.shape == want.shape and got.dtype == want.dtype
  if case == "padding":  # padded query rows: Flax averages all values, jax_flash gives 0
    close(got[rows], want[rows])
    close(got[~rows], 0.0)
  else:
    close(got, want)


def test_attention_fn_gradients_match_flax():
  shape = (B, T, NH, 8)
  q, k, v = rand(5, shape), rand(6, shape), rand(7, shape)
  bias = rand(8, (1, NH, T, T))
  mask = nn.make_causal_mask(jnp.ones((B, T)))
  ct = rand(9, shape)

  def loss(fn, q, k, v, bias):
    return jnp.sum(fn(q, k, v, bias, mask) * ct)

  want = jax.grad(functools.partial(loss, nn.dot_product_attention), (0, 1, 2, 3))(
      q, k, v, bias)
  got = jax.grad(functools.partial(loss, dot_product_attention), (0, 1, 2, 3))(
      q, k, v, bias)
  for g, w in zip(got, want):
    close(g, w, atol=1e-4, rtol=1e-4)


def test_attention_fn_gqa_and_dtype():
  q, k, v = rand(10, (B, T, 8, 16)), rand(11, (B, T, 2, 16)), rand(12, (B, T, 2, 16))
  mask = nn.make_causal_mask(jnp.ones((B, T)))
  close(dot_product_attention(q, k, v, mask=mask), naive(q, k, v, mask))
  # dtype= promotes like Flax: the computation and the result take that dtype.
  out = dot_product_attention(q.astype(jnp.bfloat16), k, v, mask=mask, dtype=jnp.float32)
  assert out.dtype == jnp.float32


# -- swap-in: attention_fn=jax_flash.flax.dot_product_attention ------------------------


def _linen_inputs(kind):
  x = rand(20, (B, T, D))
  if kind == "none":
    return x, None, np.ones((B, T), bool)
  if kind == "causal":
    return x, nn.make_causal_mask(jnp.ones((B, T))), np.ones((B, T), bool)
  mask, rows = padding_mask([T, 5], T)
  return x, mask, rows


@pytest.mark.parametrize("kind", ["none", "causal", "padding"])
def test_linen_swap_in(kind):
  x, mask, rows = _linen_inputs(kind)
  flax_mod = nn.MultiHeadDotProductAttention(num_heads=NH)
  ours = nn.MultiHeadDotProductAttention(num_heads=NH, attention_fn=dot_product_attention)
  params = flax_mod.init(jax.random.key(0), x)
  close(ours.apply(params, x, mask=mask)[rows], flax_mod.apply(params, x, mask=mask)[rows])

  def loss(mod, params, x):
    return jnp.sum(mod.apply(params, x, mask=mask)[rows] ** 2)

  want = jax.grad(functools.partial(loss, flax_mod), (0, 1))(params, x)
  got = jax.grad(functools.partial(loss, ours), (0, 1))(params, x)
  jax.tree.map(lambda g, w: close(g, w, atol=1e-4, rtol=1e-4), got, want)


@pytest.mark.parametrize("kind", ["none", "causal", "padding"])
def test_nnx_swap_in(kind):
  x, mask, rows = _linen_inputs(kind)
  flax_mod = nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(0))
  ours = nnx.MultiHeadAttention(NH, D, decode=False, attention_fn=dot_product_attention,
                                rngs=nnx.Rngs(0))
  close(ours(x, mask=mask)[rows], flax_mod(x, mask=mask)[rows])

  def loss(mod, x):
    return jnp.sum(mod(x, mask=mask)[rows] ** 2)

  want = nnx.grad(loss, argnums=(0, 1))(flax_mod, x)
  got = nnx.grad(loss, argnums=(0, 1))(ours, x)
  jax.tree.map(lambda g, w: close(g, w, atol=1e-4, rtol=1e-4), got, want)


def test_nnx_swap_in_under_jit_and_inactive_dropout():
  """Inactive dropout (deterministic=True) is fine; nnx.jit traces the adapter."""
  x, mask, _ = _linen_inputs("causal")
  kw = dict(decode=False, dropout_rate=0.1, deterministic=True)
  flax_mod = nnx.MultiHeadAttention(NH, D, rngs=nnx.Rngs(0), **kw)
  ours = nnx.MultiHeadAttention(NH, D, attention_fn=dot_product_attention,
                                rngs=nnx.Rngs(0), **kw)
  call = nnx.jit(lambda m, x: m(x, mask=mask))
  close(call(ours, x), call(flax_mod, x))


# -- ready modules: Flax checkpoints load unchanged ------------------------------------


@pytest.mark.parametrize("cfg", [dict(), dict(qkv_features=48, out_features=24,
                                               normalize_qk=True)])
def test_linen_module_takes_flax_params(cfg):
  x, mask, _ = _linen_inputs("causal")
  flax_mod = nn.MultiHeadDotProductAttention(num_heads=NH, **cfg)
  params = flax_mod.init(jax.random.key(1), x)
  ours = jf.linen.MultiHeadDotProductAttention(num_heads=NH, **cfg)
  own_params = ours.init(jax.random.key(1), x)
  assert (jax.tree.structure(own_params) == jax.tree.structure(params))
  assert jax.tree.map(jnp.shape, own_params) == jax.tree.map(jnp.shape, params)
  close(ours.apply(params, x, mask=mask), flax_mod.apply(params, x, mask=mask))
  # The alias keeps Flax's default submodule name, as nn.MultiHeadAttention does.
  assert jf.linen.MultiHeadAttention.__name__ == nn.MultiHeadAttention.__name__


@pytest.mark.parametrize("cfg", [dict(), dict(qkv_features=48, out_features=24,
                                               normalize_qk=True)])
def test_nnx_module_takes_flax_state(cfg):
  x, mask, _ = _linen_inputs("causal")
  flax_mod = nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(3), **cfg)
  ours = jf_nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(4), **cfg)
  flax_state, own_state = nnx.state(flax_mod, nnx.Param), nnx.state(ours, nnx.Param)
  assert jax.tree.map(jnp.shape, own_state) == jax.tree.map(jnp.shape, flax_state)
  nnx.update(ours, flax_state)
  close(ours(x, mask=mask), flax_mod(x, mask=mask))


# -- module features: the fast paths against equivalent dense masks --------------------


def _linen_projections(params, x, num_kv):
  p = params["params"]
  proj = lambda name: jnp.einsum("btd,dnh->btnh", x, p[name]["kernel"]) + p[name]["bias"]
  return proj("query"), proj("key"), proj("value"), p["out"]


def test_linen_gqa_against_naive():
  x = rand(30, (B, T, D))
  mod = jf.linen.MultiHeadDotProductAttention(num_heads=NH, num_kv_heads=2, is_causal=True)
  params = mod.init(jax.random.key(2), x)
  assert params["params"]["key"]["kernel"].shape == (D, 2, D // NH)
  assert params["params"]["query"]["kernel"].shape == (D, NH, D // NH)
  q, k, v, out = _linen_projections(params, x, 2)
  ref = naive(q, k, v, np.tril(np.ones((T, T), bool)))
  ref = np.einsum("btnh,nhd->btd", ref, np.asarray(out["kernel"], np.float64)) + out["bias"]
  close(mod.apply(params, x), ref, atol=1e-4, rtol=1e-4)


def test_nnx_gqa_matches_flax_gqa_and_fallback(monkeypatch):
  x = rand(31, (B, T, D))
  ours = jf_nnx.MultiHeadAttention(NH, D, num_kv_heads=2, is_causal=True, decode=False,
                                   rngs=nnx.Rngs(5))
  assert ours.key.kernel.shape == (D, 2, D // NH)
  q, k, v = ours.query(x), ours.key(x), ours.value(x)
  ref = naive(q, k, v, np.tril(np.ones((T, T), bool)))
  close(ours(x), ours.out(jnp.asarray(ref, jnp.float32)), atol=1e-4, rtol=1e-4)
  # Flax versions without num_kv_heads: the module builds the smaller projections itself.
  monkeypatch.setattr(jf_nnx, "_FLAX_HAS_GQA", False)
  old = jf_nnx.MultiHeadAttention(NH, D, num_kv_heads=2, decode=False, rngs=nnx.Rngs(5))
  assert old.key.kernel.shape == old.value.kernel.shape == (D, 2, D // NH)
  assert old(x).shape == (B, T, D)


def _band(t, left, right):
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  return (j >= i - left) & (j <= i + right)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_module_fast_paths_equal_dense_masks(api):
  """is_causal, local_window_size, segment ids and lengths vs the same dense mask."""
  x = rand(32, (B, T, D))
  seg = jnp.asarray(np.repeat([[0] * 5 + [1] * 7, [0] * 3 + [1] * 4 + [2] * 5], 1, 0))
  lengths = jnp.asarray([T, 8])
  causal = np.tril(np.ones((T, T), bool))
  seg_mask = np.asarray(seg)[:, None, :, None] == np.asarray(seg)[:, None, None, :]
  len_mask = np.arange(T)[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
  cases = [  # (module options, call options, equivalent dense mask [B|1, 1, T, T])
      (dict(is_causal=True), {}, causal[None, None]),
      (dict(local_window_size=(3, 1)), {}, _band(T, 3, 1)[None, None]),
      (dict(is_causal=True, local_window_size=2), {}, (causal & _band(T, 2, 2))[None, None]),
      (dict(is_causal=True), dict(q_segment_ids=seg), causal & seg_mask),
      ({}, dict(key_value_seq_lengths=lengths), len_mask),
  ]
  for opts, call, dense in cases:
    dense = jnp.asarray(dense)
    if api == "linen":
      flax_mod = nn.MultiHeadDotProductAttention(num_heads=NH)
      params = flax_mod.init(jax.random.key(3), x)
      got = jf.linen.MultiHeadDotProductAttention(num_heads=NH, **opts).apply(
          params, x, **call)
      want = flax_mod.apply(params, x, mask=dense)
    else:
      flax_mod = nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(6))
      ours = jf_nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(7), **opts)
      nnx.update(ours, nnx.state(flax_mod, nnx.Param))
      got, want = ours(x, **call), flax_mod(x, mask=dense)
    close(got, want)


def test_nnx_call_time_is_causal_overrides():
  x = rand(33, (B, T, D))
  mod = jf_nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(8))
  causal = nn.make_causal_mask(jnp.ones((B, T)))
  close(mod(x, is_causal=True), mod(x, mask=causal))
  mod_c = jf_nnx.MultiHeadAttention(NH, D, is_causal=True, decode=False, rngs=nnx.Rngs(8))
  close(mod_c(x, is_causal=False), mod(x))


# -- decoding with the KV cache: kv lengths instead of a dense mask --------------------


@pytest.mark.parametrize("num_kv", [NH, 2])
def test_linen_decode_matches_full_causal(num_kv):
  x = rand(40, (B, T, D))
  full = jf.linen.MultiHeadDotProductAttention(num_heads=NH, num_kv_heads=num_kv,
                                               is_causal=True)
  params = full.init(jax.random.key(4), x)
  want = full.apply(params, x)
  dec = full.clone(decode=True)
  cache = dec.init(jax.random.key(4), x)["cache"]
  for t in range(4):
    y, upd = dec.apply({**params, "cache": cache}, x[:, t:t + 1], mutable=["cache"])
    cache = upd["cache"]
    close(y[:, 0], want[:, t])


@pytest.mark.parametrize("num_kv", [NH, 2])
def test_nnx_decode_matches_full_causal(num_kv):
  x = rand(41, (B, T, D))
  mod = jf_nnx.MultiHeadAttention(NH, D, num_kv_heads=num_kv, is_causal=True,
                                  decode=False, rngs=nnx.Rngs(9))
  want = mod(x)
  mod.init_cache(x.shape)
  for t in range(4):
    close(mod(x[:, t:t + 1], decode=True)[:, 0], want[:, t])


# -- errors ----------------------------------------------------------------------------


def test_active_dropout_raises():
  x = rand(50, (B, T, D))
  mod = nnx.MultiHeadAttention(NH, D, decode=False, dropout_rate=0.1,
                               attention_fn=dot_product_attention, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dropout_rate=0.1"):
    mod(x, deterministic=False)
  lin = jf.linen.MultiHeadDotProductAttention(num_heads=NH, dropout_rate=0.1)
  params = lin.init(jax.random.key(0), x, deterministic=True)
  with pytest.raises(ValueError, match="dropout"):
    lin.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


def test_unsupported_flax_options_raise():
  x = rand(51, (B, T, D))
  mod = jf_nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="sow"):
    mod(x, sow_weights=True)
  q = rand(52, (B, T, NH, 8))
  with pytest.raises(ValueError, match="qk_attn_weights_einsum"):
    dot_product_attention(q, q, q, qk_attn_weights_einsum=jnp.einsum,
                          attn_weights_value_einsum=jnp.einsum)
  with pytest.raises(ValueError, match="broadcast"):  # a mask with the wrong length
    dot_product_attention(q, q, q, mask=jnp.ones((B, 1, T, T + 1), bool))


def test_bad_module_arguments_raise():
  x = rand(53, (B, T, D))
  with pytest.raises(ValueError, match="num_kv_heads"):
    jf_nnx.MultiHeadAttention(NH, D, num_kv_heads=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_kv_heads"):
    jf.linen.MultiHeadDotProductAttention(num_heads=NH, num_kv_heads=3).init(
        jax.random.key(0), x)
  mod = jf_nnx.MultiHeadAttention(NH, D, decode=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="init_cache"):
    mod(x[:, :1], decode=True)
  with pytest.raises(ValueError, match="inputs_k"):
    mod(x, None, x)
  with pytest.raises(ValueError, match="in_features"):
    mod(rand(54, (B, T, D + 1)))
  win = jf_nnx.MultiHeadAttention(NH, D, local_window_size=4, rngs=nnx.Rngs(0))
  win.init_cache(x.shape)
  with pytest.raises(ValueError, match="local_window_size"):
    win(x[:, :1], decode=True)


# -- bfloat16, and on a GPU the CUDA kernels ------------------------------------------


def _check_bf16_module(implementation):
  """The NNX module in bf16 on `implementation` (forced: no silent fallback) against
  Flax's float32 module with the same parameters, outputs and parameter gradients."""
  t, n, h = 256, 8, 64
  x = rand(60, (2, t, n * h))
  fn = functools.partial(dot_product_attention, implementation=implementation)
  ours = jf_nnx.MultiHeadAttention(n, n * h, is_causal=True, decode=False,
                                   dtype=jnp.bfloat16, attention_fn=fn, rngs=nnx.Rngs(0))
  ref = nnx.MultiHeadAttention(n, n * h, decode=False, rngs=nnx.Rngs(1))
  nnx.update(ref, nnx.state(ours, nnx.Param))
  causal = nn.make_causal_mask(jnp.ones((2, t)))
  sq = lambda y: jnp.sum(y.astype(jnp.float32) ** 2)

  want_out = ref(x, mask=causal)
  close(ours(x), want_out, atol=0.03 * float(jnp.abs(want_out).max()), rtol=0.05)
  got = nnx.grad(lambda mod: sq(mod(x)))(ours)
  want = nnx.grad(lambda mod: sq(mod(x, mask=causal)))(ref)
  # One scale for all leaves: the key bias gradient is exactly 0 in exact arithmetic
  # (softmax ignores a per-row shift), so only bf16 rounding remains there.
  scale = max(float(jnp.abs(w).max()) for w in jax.tree.leaves(want))
  jax.tree.map(lambda g, w: close(g, w, atol=0.03 * scale, rtol=0.1), got, want)


def test_bf16_module_pure_jax_path():
  _check_bf16_module("xla")


@pytest.mark.gpu
def test_bf16_module_cuda_kernels():
  q = jax.ShapeDtypeStruct((2, 256, 8, 64), jnp.bfloat16)
  try:
    jax.eval_shape(functools.partial(jax_flash.attention, is_causal=True,
                                     implementation="cuda"), q, q, q)
  except ValueError as e:
    pytest.skip(f"the CUDA kernels cannot run here: {e}")
  _check_bf16_module("cuda")
