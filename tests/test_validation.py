"""Bad input raises ValueError/TypeError whose message names the argument and values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash

B, T, S, N, K, H = 2, 8, 10, 4, 2, 16


def qkv(**over):
  shapes = dict(q=(B, T, N, H), k=(B, S, K, H), v=(B, S, K, H))
  shapes.update(over)
  rng = np.random.default_rng(0)
  return [jnp.asarray(rng.standard_normal(shapes[n]), jnp.float32) for n in "qkv"]


def call(q=None, k=None, v=None, **kw):
  dq, dk, dv = qkv()
  return jax_flash.attention(dq if q is None else q, dk if k is None else k,
                             dv if v is None else v, **kw)


CASES = [
    # (description, kwargs or args builder, exception, words the message must contain)
    ("rank 2 query", lambda: call(q=jnp.ones((T, N * H))), ValueError, ["query", "rank"]),
    ("ranks differ", lambda: call(k=jnp.ones((S, K, H))), ValueError, ["same rank"]),
    ("heads not divisible", lambda: call(*qkv(k=(B, S, 3, H), v=(B, S, 3, H))), ValueError,
     ["4", "3", "multiple"]),
    ("head dims differ", lambda: call(*qkv(k=(B, S, K, 8))), ValueError, ["16", "8"]),
    ("kv lengths differ", lambda: call(*qkv(v=(B, S + 1, K, H))), ValueError,
     ["value", str(S + 1)]),
    ("batch differs", lambda: call(*qkv(k=(B + 1, S, K, H), v=(B + 1, S, K, H))), ValueError,
     ["batch"]),
    ("integer query", lambda: call(q=jnp.ones((B, T, N, H), jnp.int32)), TypeError,
     ["query", "int32"]),
    ("mixed dtypes", lambda: call(k=jnp.ones((B, S, K, H), jnp.bfloat16)), TypeError,
     ["bfloat16", "float32"]),
    ("zero-sized", lambda: call(*qkv(q=(B, 0, N, H))), ValueError, ["zero", "query"]),
    ("bias does not broadcast", lambda: call(bias=jnp.ones((B, N, T, S + 1))), ValueError,
     ["bias", str(S + 1)]),
    ("bias rank too high", lambda: call(bias=jnp.ones((1, B, N, T, S))), ValueError,
     ["bias", "rank"]),
    ("integer bias", lambda: call(bias=jnp.ones((B, N, T, S), jnp.int32)), TypeError,
     ["bias"]),
    ("float mask", lambda: call(mask=jnp.ones((B, N, T, S))), TypeError, ["mask", "bool"]),
    ("mask does not broadcast", lambda: call(mask=jnp.ones((3, N, T, S), bool)), ValueError,
     ["mask", "(3, 4, 8, 10)"]),
    ("lengths shape", lambda: call(query_seq_lengths=jnp.ones((B + 1,), jnp.int32)),
     ValueError, ["query_seq_lengths", "(3,)"]),
    ("float lengths", lambda: call(key_value_seq_lengths=jnp.ones((B,))), TypeError,
     ["key_value_seq_lengths"]),
    ("segments one-sided", lambda: call(q_segment_ids=jnp.zeros((B, T), jnp.int32)),
     ValueError, ["kv_segment_ids", "q_segment_ids"]),
    ("segment shape", lambda: call(q_segment_ids=jnp.zeros((B, T + 1), jnp.int32),
                                   kv_segment_ids=jnp.zeros((B, S), jnp.int32)), ValueError,
     ["q_segment_ids", str(T + 1)]),
    ("negative window", lambda: call(local_window_size=(-1, 2)), ValueError,
     ["local_window_size", "-1"]),
    ("bad window type", lambda: call(local_window_size=2.5), TypeError,
     ["local_window_size", "2.5"]),
    ("window triple", lambda: call(local_window_size=(1, 2, 3)), TypeError,
     ["local_window_size"]),
    ("non-positive softcap", lambda: call(softcap=0.0), ValueError, ["softcap"]),
    ("infinite scale", lambda: call(scale=float("inf")), ValueError, ["scale"]),
    ("string scale", lambda: call(scale="big"), TypeError, ["scale", "big"]),
    ("is_causal not bool", lambda: call(is_causal="yes"), TypeError, ["is_causal"]),
    ("unknown implementation", lambda: call(implementation="triton"), ValueError,
     ["implementation", "triton"]),
]


@pytest.mark.parametrize("desc,fn,exc,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(desc, fn, exc, words):
  with pytest.raises(exc) as info:
    fn()
  msg = str(info.value)
  for w in words:
    assert w in msg, f"{desc}: {w!r} not in message {msg!r}"


def test_cuda_request_without_kernels_says_why():
  """On a machine without usable kernels, implementation='cuda' explains itself."""
  from jax_flash import api
  q, k, v = qkv()
  call_ = jax_flash._validate.canonicalize(
      q, k, v, None, None, scale=None, is_causal=False, local_window_size=None,
      query_seq_lengths=None, key_value_seq_lengths=None, q_segment_ids=None,
      kv_segment_ids=None, softcap=None, return_lse=False, implementation="cuda")
  reason = api._kernel_reason(call_)
  if reason is None:
    pytest.skip("kernels can run float32 here; nothing to refuse")
  with pytest.raises(ValueError, match="implementation='cuda' cannot run this call"):
    call(implementation="cuda")
