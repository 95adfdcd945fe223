"""Every feature of jax_flash.attention on the "xla" path against the float64 reference.

float32 inputs must match float64 naive attention to relative error <= 1e-5 (values,
lse and every gradient, through the lse too); bfloat16 follows FlashAttention's rule.
Inputs are fresh random normals for each case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
import reference as ref
from reference import TOL, check_against_reference, make_features, make_qkv, split_kwargs

FEATURES = ["plain", "causal", "window_int", "window_pair", "window_left_only",
            "causal_window", "lengths", "segments", "softcap", "bias_full", "bias_bcast",
            "bias_2d", "mask", "everything"]


@pytest.mark.parametrize("feature", FEATURES)
def test_feature_float32(feature):
  rng = np.random.default_rng(hash(feature) % 2**32)
  b, t, s, n, n_kv, h = 2, 37, 45, 4, 2, 16
  q, k, v = make_qkv(rng, b, t, s, n, n_kv, h)
  check_against_reference(q, k, v, make_features(rng, feature, b, t, s, n))


@pytest.mark.parametrize("t,s", [(1, 1), (1, 17), (17, 1), (17, 129), (129, 17), (129, 129)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_odd_sizes(t, s, is_causal):
  rng = np.random.default_rng(t * 1000 + s + is_causal)
  q, k, v = make_qkv(rng, 1, t, s, 2, 1, 8)
  check_against_reference(q, k, v, dict(is_causal=is_causal))


def test_multiple_blocks(monkeypatch):
  """Several query and key blocks with ragged ends exercise the online softmax."""
  from jax_flash import _xla
  monkeypatch.setattr(_xla, "BLOCK_Q", 16)
  monkeypatch.setattr(_xla, "BLOCK_K", 24)
  rng = np.random.default_rng(7)
  b, t, s, n = 2, 70, 101, 4
  q, k, v = make_qkv(rng, b, t, s, n, 2, 8)
  for feature in ("plain", "causal_window", "everything"):
    check_against_reference(q, k, v, make_features(rng, feature, b, t, s, n))


@pytest.mark.parametrize("n,n_kv,h,hv", [(4, 4, 16, 16), (8, 2, 16, 16), (6, 1, 8, 8),
                                         (4, 2, 16, 24)])
def test_heads_gqa_mqa_hv(n, n_kv, h, hv):
  rng = np.random.default_rng(n * 100 + n_kv * 10 + hv)
  q, k, v = make_qkv(rng, 2, 19, 23, n, n_kv, h, hv)
  check_against_reference(q, k, v, dict(is_causal=True))


@pytest.mark.parametrize("feature", ["plain", "causal", "everything"])
def test_bfloat16_flash_rule(feature):
  """bf16: error vs float64 at most 2x that of the naive computation in bf16."""
  rng = np.random.default_rng(11)
  b, t, s, n = 2, 40, 52, 4
  q, k, v = make_qkv(rng, b, t, s, n, 2, 32, dtype=jnp.bfloat16)
  arrays, static = split_kwargs(make_features(rng, feature, b, t, s, n))
  out, lse = jax_flash.attention(q, k, v, return_lse=True, implementation="xla",
                                 **arrays, **static)
  assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
  dout = jnp.asarray(rng.standard_normal(out.shape), jnp.bfloat16)
  grads = jax.grad(lambda q, k, v: (jax_flash.attention(
      q, k, v, implementation="xla", **arrays, **static) * dout).astype(jnp.float32).sum(),
                   argnums=(0, 1, 2))(q, k, v)
  with ref.x64():
    def naive(dtype):
      fn = lambda q, k, v: ref.attention(q, k, v, dtype=dtype, **arrays, **static)[0]
      args = [jnp.asarray(x, dtype) for x in (q, k, v)]
      o, vjp = jax.vjp(fn, *args)
      return [np.asarray(jnp.asarray(x, jnp.float64)) for x in (o, *vjp(dout.astype(dtype)))]
    exact, lowp = naive(jnp.float64), naive(jnp.bfloat16)
  for name, got, want, low in zip(("out", "dq", "dk", "dv"), (out, *grads), exact, lowp):
    ref.assert_flash_rule(got, low, want, name)


def test_rank3_and_extra_leading_dims():
  rng = np.random.default_rng(3)
  q, k, v = make_qkv(rng, 6, 9, 11, 2, 2, 8)
  bias = jnp.asarray(rng.standard_normal((6, 2, 9, 11)), jnp.float32)
  want = jax_flash.attention(q, k, v, bias, is_causal=True, implementation="xla")
  lead = lambda x: x.reshape((2, 3) + x.shape[1:])
  got = jax_flash.attention(lead(q), lead(k), lead(v), lead(bias), is_causal=True,
                            implementation="xla")
  assert got.shape == (2, 3, 9, 2, 8)
  np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6, atol=1e-6)
  got3 = jax_flash.attention(q[0], k[0], v[0], bias[0], is_causal=True, implementation="xla")
  assert got3.shape == (9, 2, 8)
  np.testing.assert_allclose(got3, want[0], rtol=1e-6, atol=1e-6)


def test_matches_jax_nn_dot_product_attention():
  """Same arguments, same numbers as jax.nn (where every row sees at least one key)."""
  rng = np.random.default_rng(5)
  b, t, s, n = 2, 24, 31, 4
  q, k, v = make_qkv(rng, b, t, s, n, 2, 16)
  bias = jnp.asarray(rng.standard_normal((b, n, t, s)), jnp.float32)
  lens = dict(query_seq_lengths=jnp.array([24, 13], jnp.int32),
              key_value_seq_lengths=jnp.array([31, 20], jnp.int32))
  for kw in (dict(is_causal=True), dict(local_window_size=(3, 5)), dict(bias=bias),
             dict(is_causal=True, local_window_size=(4, 0)), dict(scale=0.3, **lens)):
    want = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
    got = jax_flash.attention(q, k, v, implementation="xla", **kw)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=str(kw.keys()))
