"""Naive attention: the independent reference every test compares against.

It materializes the full [B, N, T, S] score matrix, builds one dense boolean mask from
every feature, and takes a plain softmax, written directly from the definitions in
jax_flash.attention's docstring and sharing no code with the package. Run in float64
it is the ground truth; run in the input dtype it gives the error budget of
FlashAttention's rule (a kernel may be at most 2x as wrong as this naive computation).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash


@contextlib.contextmanager
def x64():
  with jax.enable_x64(True):
    yield


def visible_mask(b, n, t, s, *, is_causal=False, local_window_size=None,
                 query_seq_lengths=None, key_value_seq_lengths=None, q_segment_ids=None,
                 kv_segment_ids=None, mask=None):
  """Dense bool [B, N, T, S]: True where query i may attend key j."""
  i = np.arange(t)[:, None]
  j = np.arange(s)[None, :]
  vis = np.ones((b, n, t, s), bool)
  if is_causal:
    vis &= (j <= i)[None, None]
  if local_window_size is not None:
    left, right = ((local_window_size, local_window_size)
                   if isinstance(local_window_size, int) else local_window_size)
    if left is not None:
      vis &= (j >= i - left)[None, None]
    if right is not None:
      vis &= (j <= i + right)[None, None]
  if query_seq_lengths is not None:
    vis &= (i[None] < np.asarray(query_seq_lengths)[:, None, None])[:, None]
  if key_value_seq_lengths is not None:
    vis &= (j[None] < np.asarray(key_value_seq_lengths)[:, None, None])[:, None]
  if q_segment_ids is not None:
    qs, ks = np.asarray(q_segment_ids), np.asarray(kv_segment_ids)
    vis &= (qs[:, :, None] == ks[:, None, :])[:, None]
  if mask is not None:
    vis &= np.broadcast_to(np.asarray(mask), vis.shape)
  return vis


def attention(q, k, v, bias=None, mask=None, *, scale=None, softcap=None,
              dtype=jnp.float64, **mask_kwargs):
  """(out [B,T,N,Hv], lse [B,N,T]) computed naively in `dtype` (use inside x64())."""
  b, t, n, h = q.shape
  s, n_kv = k.shape[1], k.shape[2]
  scale = 1.0 / np.sqrt(h) if scale is None else scale
  q, k, v = (jnp.asarray(x).astype(dtype) for x in (q, k, v))
  k = jnp.repeat(k, n // n_kv, axis=2)
  v = jnp.repeat(v, n // n_kv, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k, precision="highest") * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(dtype)
  vis = visible_mask(b, n, t, s, mask=mask, **mask_kwargs)
  logits = jnp.where(vis, logits, -jnp.inf)
  row_max = logits.max(-1, keepdims=True)
  empty = ~vis.any(-1)
  row_max = jnp.where(empty[..., None], 0, row_max)
  p = jnp.exp(logits - row_max)
  total = p.sum(-1)
  lse = jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, 1, total)) + row_max[..., 0])
  p = p / jnp.where(empty, 1, total)[..., None]
  out = jnp.einsum("bnts,bsnh->btnh", p.astype(dtype), v, precision="highest")
  return out, lse


def rel_err(got, want) -> float:
  """||got - want|| / ||want|| over finite entries of want; inf if NaN appears."""
  got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
  want = np.asarray(want, np.float64)
  if np.isnan(got).any():
    return float("inf")
  fin = np.isfinite(want)
  if not np.array_equal(np.isfinite(got), fin) or not np.array_equal(got[~fin], want[~fin]):
    return float("inf")  # -inf lse must match exactly
  denom = np.linalg.norm(want[fin])
  return float(np.linalg.norm(got[fin] - want[fin]) / max(denom, 1e-30))


def max_err(got, want) -> float:
  got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
  want = np.asarray(want, np.float64)
  if np.isnan(got).any():
    return float("inf")
  fin = np.isfinite(want)
  return float(np.abs(got[fin] - want[fin]).max(initial=0.0))


def assert_flash_rule(got, naive_lowp, ref64, name: str, floor: float = 1e-6):
  """FlashAttention's rule: error of `got` vs float64 is at most 2x the error of the
  naive computation done in the input dtype (plus a tiny floor for exact cases)."""
  budget = 2.0 * max_err(naive_lowp, ref64) + floor
  err = max_err(got, ref64)
  assert err <= budget, f"{name}: max error {err:.3g} > budget {budget:.3g} (2x naive)"


# -- shared test helpers -------------------------------------------------------------

TOL = 1e-5
ARRAY_KW = ("bias", "mask", "query_seq_lengths", "key_value_seq_lengths",
            "q_segment_ids", "kv_segment_ids")


def make_qkv(rng, b, t, s, n, n_kv, h, hv=None, dtype=np.float32):
  hv = h if hv is None else hv
  q = rng.standard_normal((b, t, n, h))
  k = rng.standard_normal((b, s, n_kv, h))
  v = rng.standard_normal((b, s, n_kv, hv))
  return [jnp.asarray(x, dtype) for x in (q, k, v)]


def make_features(rng, name, b, t, s, n):
  """Keyword arguments for one named feature combination, with random contents."""
  seg_q = np.sort(rng.integers(0, 3, (b, t)), axis=1).astype(np.int32)
  seg_k = np.sort(rng.integers(0, 3, (b, s)), axis=1).astype(np.int32)
  lens = dict(query_seq_lengths=rng.integers(1, t + 1, b).astype(np.int32),
              key_value_seq_lengths=rng.integers(1, s + 1, b).astype(np.int32))
  table = {
      "plain": {},
      "causal": dict(is_causal=True),
      "window_int": dict(local_window_size=5),
      "window_pair": dict(local_window_size=(7, 2)),
      "window_left_only": dict(local_window_size=(4, None)),
      "causal_window": dict(is_causal=True, local_window_size=(6, 3)),
      "lengths": lens,
      "segments": dict(q_segment_ids=seg_q, kv_segment_ids=seg_k),
      "softcap": dict(softcap=2.0, scale=0.9),
      "bias_full": dict(bias=rng.standard_normal((b, n, t, s)).astype(np.float32)),
      "bias_bcast": dict(bias=rng.standard_normal((1, n, 1, s)).astype(np.float32)),
      "bias_2d": dict(bias=rng.standard_normal((t, s)).astype(np.float32)),
      "mask": dict(mask=rng.random((b, 1, t, s)) < 0.7),
      "everything": dict(is_causal=True, local_window_size=(9, 0), softcap=3.0,
                         q_segment_ids=seg_q, kv_segment_ids=seg_k,
                         bias=rng.standard_normal((b, 1, t, s)).astype(np.float32),
                         mask=rng.random((1, n, t, s)) < 0.8, **lens),
  }
  return table[name]


def split_kwargs(kw):
  arrays = {k: jnp.asarray(v) for k, v in kw.items() if k in ARRAY_KW}
  static = {k: v for k, v in kw.items() if k not in ARRAY_KW}
  return arrays, static


def check_against_reference(q, k, v, kw, tol=TOL, seed=1, implementation="xla"):
  """Values, lse and gradients (q, k, v, bias; through out and lse) vs float64."""
  arrays, static = split_kwargs(kw)
  rng = np.random.default_rng(seed)
  b, t, n, _ = q.shape
  dout = jnp.asarray(rng.standard_normal(q.shape[:3] + v.shape[3:]), jnp.float32)
  dlse = jnp.asarray(rng.standard_normal((b, n, t)), jnp.float32)

  def loss(fn, q, k, v, bias):
    out, lse = fn(q, k, v, bias)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    return (out * dout.astype(out.dtype)).sum() + (lse * dlse.astype(lse.dtype)).sum()

  bias = arrays.pop("bias", None)
  ours = lambda q, k, v, bias: jax_flash.attention(
      q, k, v, bias, return_lse=True, implementation=implementation, **arrays, **static)
  out, lse = jax.jit(ours)(q, k, v, bias)
  grads = jax.jit(jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2, 3)))(q, k, v, bias)

  with x64():
    q64, k64, v64 = (jnp.asarray(x, jnp.float64) for x in (q, k, v))
    b64 = None if bias is None else jnp.asarray(bias, jnp.float64)
    naive = lambda q, k, v, bias: attention(q, k, v, bias, **arrays, **static)
    out64, lse64 = naive(q64, k64, v64, b64)
    g64 = jax.grad(lambda *a: loss(naive, *a), argnums=(0, 1, 2, 3))(q64, k64, v64, b64)
    out64, lse64 = np.asarray(out64), np.asarray(lse64)
    g64 = [None if g is None else np.asarray(g) for g in g64]

  assert rel_err(out, out64) <= tol, ("out", rel_err(out, out64))
  assert rel_err(lse, lse64) <= tol, ("lse", rel_err(lse, lse64))
  for name, g, w in zip(("dq", "dk", "dv", "dbias"), grads, g64):
    if w is None:
      continue
    assert not np.isnan(np.asarray(g, np.float32)).any(), f"{name} has NaN"
    assert rel_err(g, w) <= tol, (name, rel_err(g, w))
  return out, lse
