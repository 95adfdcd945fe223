"""jit, grad, vmap (over any argument), remat; empty rows; O(N) memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
import reference as ref
from reference import check_against_reference, make_qkv

attn = functools.partial(jax_flash.attention, implementation="xla")


def test_vmap_over_query_only_shares_kv():
  rng = np.random.default_rng(0)
  q, k, v = make_qkv(rng, 2, 12, 15, 4, 2, 8)
  qs = jnp.asarray(rng.standard_normal((3,) + q.shape), jnp.float32)
  got = jax.vmap(lambda q: attn(q, k, v, is_causal=True))(qs)
  for i in range(3):
    np.testing.assert_allclose(got[i], attn(qs[i], k, v, is_causal=True), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("in_axes", [(0, 0, 0, None), (None, 1, 1, None), (0, None, None, 0)])
def test_vmap_any_argument_with_grad(in_axes):
  """vmap over q/k/v/bias in any combination, including under grad."""
  rng = np.random.default_rng(1)
  q, k, v = make_qkv(rng, 2, 10, 14, 2, 1, 8)
  bias = jnp.asarray(rng.standard_normal((2, 2, 10, 14)), jnp.float32)
  stack = lambda x, ax: jnp.stack([x * (1 + 0.1 * i) for i in range(3)], axis=ax)
  args = [x if ax is None else stack(x, ax) for x, ax in zip((q, k, v, bias), in_axes)]
  f = lambda q, k, v, b: (attn(q, k, v, b, is_causal=True) ** 2).sum()
  got = jax.vmap(jax.grad(f, argnums=(0, 1, 2, 3)), in_axes=in_axes)(*args)
  for i in range(3):
    sl = [x if ax is None else jnp.take(x, i, axis=ax) for x, ax in zip(args, in_axes)]
    want = jax.grad(f, argnums=(0, 1, 2, 3))(*sl)
    for g, w, ax in zip(got, want, in_axes):
      g = jnp.take(g, i, axis=0)  # vmap puts the batched grad axis first
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_vmap_over_lengths_and_segments():
  rng = np.random.default_rng(2)
  q, k, v = make_qkv(rng, 2, 9, 9, 2, 2, 8)
  lens = jnp.asarray([[3, 9], [9, 5], [1, 2]], jnp.int32)
  got = jax.vmap(lambda l: attn(q, k, v, key_value_seq_lengths=l))(lens)
  for i in range(3):
    np.testing.assert_allclose(got[i], attn(q, k, v, key_value_seq_lengths=lens[i]),
                               rtol=1e-6, atol=1e-6)
  seg = jnp.asarray(rng.integers(0, 2, (3, 2, 9)), jnp.int32)
  got = jax.vmap(lambda s: attn(q, k, v, q_segment_ids=s, kv_segment_ids=s))(seg)
  for i in range(3):
    np.testing.assert_allclose(got[i], attn(q, k, v, q_segment_ids=seg[i],
                                            kv_segment_ids=seg[i]), rtol=1e-6, atol=1e-6)


def test_remat_and_jit_grad():
  rng = np.random.default_rng(3)
  q, k, v = make_qkv(rng, 1, 20, 20, 2, 2, 8)
  f = lambda q, k, v: jnp.sin(attn(q, k, v, is_causal=True)).sum()
  want = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(jax.checkpoint(f), argnums=(0, 1, 2)))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_empty_rows_give_zero_and_minus_inf():
  """A zero-length batch entry, a query segment absent from the keys, and a window
  that lands entirely on padding: output 0, lse -inf, no NaN in any gradient."""
  rng = np.random.default_rng(4)
  b, t, s = 3, 10, 12
  q, k, v = make_qkv(rng, b, t, s, 2, 1, 8)
  q_seg = np.zeros((b, t), np.int32)
  q_seg[1, 6:] = 7  # segment 7 never appears in the keys
  kw = dict(key_value_seq_lengths=np.array([0, 12, 4], np.int32),
            q_segment_ids=q_seg, kv_segment_ids=np.zeros((b, s), np.int32),
            local_window_size=(2, 2))  # batch 2: queries >= 7 see only padded keys
  out, lse = check_against_reference(q, k, v, kw)
  out, lse = np.asarray(out), np.asarray(lse)
  assert (out[0] == 0).all() and np.isneginf(lse[0]).all()
  assert (out[1, 6:] == 0).all() and np.isneginf(lse[1, :, 6:]).all()
  assert (out[2, 7:] == 0).all() and np.isneginf(lse[2, :, 7:]).all()
  assert np.isfinite(lse[2, :, :6]).all()


def test_lse_is_logsumexp_of_scaled_logits():
  rng = np.random.default_rng(6)
  q, k, v = make_qkv(rng, 1, 5, 7, 1, 1, 4)
  _, lse = attn(q, k, v, scale=0.7, return_lse=True)
  logits = np.einsum("th,sh->ts", np.asarray(q[0, :, 0], np.float64),
                     np.asarray(k[0, :, 0], np.float64)) * 0.7
  want = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(np.asarray(lse[0, 0]), want, rtol=1e-6)


def test_memory_is_linear_in_sequence_length():
  """T = S = 16384: compiled fwd+bwd temporaries stay under 64 MiB (a T x S float32
  score matrix alone would be 1 GiB)."""
  n = 16384
  spec = jax.ShapeDtypeStruct((1, n, 1, 64), jnp.float32)
  loss = lambda q, k, v: attn(q, k, v, is_causal=True).sum()
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 64 * 2**20, f"fwd+bwd temp memory {temp / 2**20:.1f} MiB"
