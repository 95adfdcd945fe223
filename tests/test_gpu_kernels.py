"""GPU tests of the CUDA kernels, through `_cuda.fwd/bwd` and `jax_flash.attention`.

Run with `pytest -m gpu` (the seqlen-131072 test also needs --run-slow). Every GPU test
skips with the reason when `_cuda.kernels_available()` says the kernels cannot run.

Accuracy rule (FlashAttention's, in a sound form). For each result X (out, lse, dq, dk, dv):
  ref    the naive computation in float32 on the GPU (matmuls at HIGHEST precision),
  naive  the same naive computation with its matmuls in the input dtype and the softmax in
         float32 (what a plain framework implementation gives; its gradients via jax.vjp),
  pass   iff X is finite wherever ref is, -inf exactly where ref is (lse of rows that see no
         key), and  max|X - ref| <= 2 * max|naive - ref| + eps(dtype) * max|ref| + 1e-5.
The first term is FlashAttention's rule: no more than twice the error of the naive
low-precision computation. The others keep the budget from collapsing to zero where naive
lands exactly on ref by luck of a tiny case: one rounding unit of the dtype at the result's
scale (the kernel rounds its result to the dtype once), and FlashAttention's 1e-5 for
results that cancel to zero (e.g. dq = 0 when each query sees a single key; float32
cancellation leaves ~1e-6 there). The inputs are O(1), so 1e-5 hides no real error.
NaN never passes.
Inputs are fresh normal samples (a different seed per case), never zeros.
"""

from __future__ import annotations

import functools
import math
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _cuda
from jax_flash._config import UNBOUNDED, AttnConfig, Extras

_REASON = _cuda.kernels_available()
_HIGHEST = jax.lax.Precision.HIGHEST
_DTYPES = {"fp16": jnp.float16, "bf16": jnp.bfloat16}
FULL = (UNBOUNDED, UNBOUNDED)
CAUSAL = (UNBOUNDED, 0)


def gpu_test(fn):
  """Marks a test `gpu` and skips it, saying why, where the kernels cannot run."""
  fn = pytest.mark.skipif(_REASON is not None, reason=f"CUDA kernels unavailable: {_REASON}")(fn)
  return pytest.mark.gpu(fn)


# ---- the reference ---------------------------------------------------------------------


def naive_dense(q, k, v, bias, visible, *, scale, softcap, low_precision):
  """(out [B,T,N,Hv], lse [B,N,T]) from dense [B,N,T,S] logits: scale * q.k, softcap,
  + bias, then -inf where `visible` (bool, broadcastable to [B,N,T,S]) is False. Matmuls in
  the input dtype (low_precision; softmax in float32) or in float32 at HIGHEST precision."""
  n, n_kv = q.shape[2], k.shape[2]
  k = jnp.repeat(k, n // n_kv, axis=2)
  v = jnp.repeat(v, n // n_kv, axis=2)
  if low_precision:
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32)
  else:
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(jnp.float32), k.astype(jnp.float32),
                        precision=_HIGHEST)
  logits = logits * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(visible, logits, -jnp.inf)
  # The result does not depend on the shift m, so its gradient is exactly zero.
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(visible, jnp.exp(logits - m), 0.0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  l_safe = jnp.where(l > 0, l, 1.0)  # rows that see nothing: out 0, lse -inf, no NaN
  p = p / l_safe
  lse = jnp.where(l[..., 0] > 0, jnp.log(l_safe[..., 0]) + m[..., 0], -jnp.inf)
  if low_precision:
    out = jnp.einsum("bnts,bsnh->btnh", p.astype(v.dtype), v)
  else:
    out = jnp.einsum("bnts,bsnh->btnh", p, v.astype(jnp.float32), precision=_HIGHEST)
  return out, lse


def _naive(q, k, v, *, scale, window, low_precision, q_offset=0):
  """naive_dense under a window: query row i (absolute position i + q_offset) sees key j
  iff i - window_left <= j <= i + window_right (UNBOUNDED sides are open)."""
  t, s = q.shape[1], k.shape[1]
  i = jnp.arange(t)[:, None] + q_offset
  j = jnp.arange(s)[None, :]
  visible = jnp.ones((t, s), bool)
  if window[0] != UNBOUNDED:
    visible &= j >= i - window[0]
  if window[1] != UNBOUNDED:
    visible &= j <= i + window[1]
  return naive_dense(q, k, v, None, visible, scale=scale, softcap=None,
                     low_precision=low_precision)


@functools.partial(jax.jit, static_argnames=("scale", "window", "q_offset"))
def _references(q, k, v, dout, dlse, *, scale, window, q_offset=0):
  """{"ref": (out, lse, dq, dk, dv) in float32, "naive": the same in the input dtype}."""
  results = {}
  for name, low in (("ref", False), ("naive", True)):
    args = (q, k, v) if low else tuple(x.astype(jnp.float32) for x in (q, k, v))
    fn = functools.partial(_naive, scale=scale, window=window, low_precision=low,
                           q_offset=q_offset)
    (out, lse), vjp = jax.vjp(fn, *args)
    grads = vjp((dout.astype(out.dtype), dlse))
    results[name] = (out, lse) + tuple(grads)
  return results


def _assert_close(name, got, ref, naive, dtype):
  got, ref, naive = (np.asarray(x, np.float64) for x in (got, ref, naive))
  assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
  empty = np.isneginf(ref)
  assert np.array_equal(np.isneginf(got), empty), (
      f"{name}: -inf at {np.sum(np.isneginf(got))} places, reference has {np.sum(empty)}")
  got, ref, naive = got[~empty], ref[~empty], naive[~empty]
  bad = ~np.isfinite(got)
  assert not bad.any(), f"{name}: {bad.sum()} of {got.size} elements are not finite"
  err = np.max(np.abs(got - ref), initial=0.0)
  naive_err = np.max(np.abs(naive - ref), initial=0.0)
  tol = 2 * naive_err + float(jnp.finfo(dtype).eps) * np.max(np.abs(ref), initial=0.0) + 1e-5
  assert err <= tol, (f"{name}: max error {err:.3g} > {tol:.3g} "
                      f"(2 x naive {naive_err:.3g} + one rounding unit + 1e-5)")


def require_built(dtype, h):
  """Skips, saying why, a case whose dtype or head dim a partial build left out
  (JAX_FLASH_DTYPES / JAX_FLASH_HEAD_DIMS); a full build runs every case."""
  if _REASON is not None:
    return
  name = _cuda._DTYPES[np.dtype(dtype)]
  if name not in _cuda._ext.built_dtypes():
    pytest.skip(f"{name} kernels not in this build ({_cuda._ext.built_dtypes()})")
  if h > _cuda._max_head_dim():
    pytest.skip(f"head dim {h} > {_cuda._max_head_dim()}, the largest in this build")


def _inputs(seed, dtype, b, t, s, n, n_kv, h):
  require_built(dtype, h)
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (b, t, n, h), dtype)
  k = jax.random.normal(keys[1], (b, s, n_kv, h), dtype)
  v = jax.random.normal(keys[2], (b, s, n_kv, h), dtype)
  dout = jax.random.normal(keys[3], (b, t, n, h), dtype)
  dlse = jax.random.normal(keys[4], (b, n, t), jnp.float32)
  return q, k, v, dout, dlse


def _seed(*case) -> int:
  return zlib.crc32(repr(case).encode())


def _case_id(case):
  dtype, b, t, s, n, n_kv, h, (wl, wr) = case
  window = "" if (wl, wr) == FULL else "-causal" if (wl, wr) == CAUSAL else f"-w{wl},{wr}"
  return f"{dtype}-b{b}-t{t}-s{s}-n{n}k{n_kv}-h{h}{window}"


def _check_all(results, refs, dtype, names=("out", "lse", "dq", "dk", "dv")):
  for name, got, ref, naive in zip(names, results, refs["ref"], refs["naive"]):
    _assert_close(name, got, ref, naive, dtype)


@functools.partial(jax.jit, static_argnums=3)
def _kernel_fwd(q, k, v, cfg):
  return _cuda.fwd(q, k, v, Extras(), cfg)


@functools.partial(jax.jit, static_argnums=7)
def _kernel_bwd(q, k, v, out, lse, dout, dlse, cfg):
  dq, dk, dv, dbias = _cuda.bwd(q, k, v, Extras(), out, lse, dout, dlse, cfg)
  assert dbias is None
  return dq, dk, dv


def _run_kernels(q, k, v, dout, dlse, cfg):
  """(out, lse, dq, dk, dv): forward, then backward, each waited for, so that the stack
  dump of a hung kernel (pytest-timeout in .ci/gpu.sh) names the direction."""
  out, lse = jax.block_until_ready(_kernel_fwd(q, k, v, cfg))
  return (out, lse) + jax.block_until_ready(_kernel_bwd(q, k, v, out, lse, dout, dlse, cfg))


# ---- the FFI plumbing -------------------------------------------------------------------


@gpu_test
def test_handler_rejects_what_the_kernels_cannot_run():
  """The C++ checks, reached through raw ffi_calls that skip the Python validation."""
  _cuda._register()
  key = jax.random.key(3)
  attrs = dict(scale=np.float32(0.25), window_left=np.int32(-1), window_right=np.int32(-1),
               softcap=np.float32(0), extras=np.int32(0), force_arch=np.int32(0))

  def fwd(q, k, v, *extra, lse_shape=None, **overrides):
    b, t, n, h = q.shape
    out_types = (jax.ShapeDtypeStruct((b, t, n, v.shape[-1]), q.dtype),
                 jax.ShapeDtypeStruct(lse_shape or (b, n, t), jnp.float32))
    call = jax.ffi.ffi_call("jax_flash_fwd", out_types)
    return jax.block_until_ready(call(q, k, v, *extra, **{**attrs, **overrides}))

  x = jax.random.normal(key, (1, 16, 2, 64), jnp.bfloat16)
  odd = jax.random.normal(key, (1, 16, 2, 12), jnp.bfloat16)
  with pytest.raises(Exception, match="multiple of 8"):
    fwd(odd, odd, odd)
  with pytest.raises(Exception, match="k has dtype float16"):
    fwd(x, x.astype(jnp.float16), x)
  with pytest.raises(Exception, match="lse has shape"):
    fwd(x, x, x, lse_shape=(1, 2, 15))
  with pytest.raises(Exception, match="multiple of key/value heads"):
    fwd(jax.random.normal(key, (1, 16, 3, 64), jnp.bfloat16), x, x)
  with pytest.raises(Exception, match="window_left / window_right"):
    fwd(x, x, x, window_left=np.int32(-5))
  with pytest.raises(Exception, match="force_arch must be"):
    fwd(x, x, x, force_arch=np.int32(75))
  # The extras: operands must match the bit set, shapes and dtypes.
  lengths = jnp.full((1,), 9, jnp.int32)
  with pytest.raises(Exception, match="names 1 optional inputs, got 0"):
    fwd(x, x, x, extras=np.int32(4))
  with pytest.raises(Exception, match="q_seqlen has dtype float32"):
    fwd(x, x, x, lengths.astype(jnp.float32), extras=np.int32(4))
  with pytest.raises(Exception, match="bias has shape"):
    fwd(x, x, x, jnp.zeros((1, 2, 16, 15), jnp.float32), extras=np.int32(1))
  with pytest.raises(Exception, match="extras must be a bit set"):
    fwd(x, x, x, extras=np.int32(64))
  with pytest.raises(Exception, match="softcap must be finite"):
    fwd(x, x, x, softcap=np.float32(-1))
  fwd(x, x, x)  # and the valid calls run
  fwd(x, x, x, jnp.ones((1, 1, 16, 1), jnp.float32), lengths, extras=np.int32(1 | 4))

  # The segment-range pre-pass (csrc/common/segment_ranges.cu).
  def ranges(q_ids, kv_ids, q_chunks=None):
    def out(ids, chunks):
      return jax.ShapeDtypeStruct((*ids.shape[:-1], chunks, 4), jnp.int32)
    call = jax.ffi.ffi_call("jax_flash_segment_ranges",
                            (out(q_ids, q_chunks or -(-q_ids.shape[-1] // 16)),
                             out(kv_ids, -(-kv_ids.shape[-1] // 16))))
    return jax.block_until_ready(call(q_ids, kv_ids))

  ids = jnp.zeros((2, 40), jnp.int32)
  with pytest.raises(Exception, match="equal leading dims"):
    ranges(ids, jnp.zeros((3, 40), jnp.int32))
  with pytest.raises(Exception, match="q_segment_range has shape"):
    ranges(ids, ids, q_chunks=2)
  ranges(ids, jnp.zeros((2, 7), jnp.int32))


@gpu_test
def test_force_arch():
  """force_arch=80 runs the portable kernels on any GPU from sm80; 90 needs the sm90
  kernels and a cc 9.0 GPU, and fails with a clear message otherwise."""
  q, k, v, dout, dlse = _inputs(5, jnp.float16, 1, 96, 96, 2, 2, 64)
  cfg = AttnConfig(scale=0.125)
  with _cuda.force_arch(80):
    out, lse = jax.jit(lambda q, k, v: _cuda.fwd(q, k, v, Extras(), cfg))(q, k, v)
  refs = _references(q, k, v, dout, dlse, scale=0.125, window=FULL)
  _check_all((out, lse), refs, jnp.float16, names=("out", "lse"))
  if 90 not in _cuda._ext.built_archs() or jax.devices()[0].compute_capability != "9.0":
    with _cuda.force_arch(90), pytest.raises(Exception, match="force_arch=90"):
      jax.block_until_ready(jax.jit(lambda q, k, v: _cuda.fwd(q, k, v, Extras(), cfg))(q, k, v))
  with pytest.raises(ValueError, match="force_arch"):
    with _cuda.force_arch(75):
      pass


def _aliased(jitted, num_donated, *args) -> jax.stages.Compiled:
  """Compiles `jitted` and checks that each donated buffer is one of its results' memory,
  with no copy between the custom call and them (so the kernel writes into those bytes)."""
  compiled = jitted.lower(*args).compile()
  text = compiled.as_text()
  aliases = re.findall(r"\{\d+\}: \(\d+, \{\}, (?:may|must)-alias\)", text)
  assert len(aliases) == num_donated, f"XLA aliased {aliases}, not {num_donated} buffers"
  assert not re.search(r"\bcopy(-start)?\(", text), "XLA copies between kernel and result"
  return compiled


@gpu_test
def test_every_output_element_is_written():
  """XLA allocates the kernels' results, so they cannot be filled with NaN before the call
  directly. Instead NaN-filled buffers of the results' shapes are donated to a jit whose
  results are exactly the kernel's outputs: XLA then places those outputs in the donated
  memory (`_aliased` checks the compiled module), so every element the kernel fails to
  write stays NaN and fails the finiteness check. Rows that see no key (T > S + 8 under a
  (8, 0) window) must still be written: output 0, lse -inf. dq is not checked this way:
  the handler zeroes dq_accum and dq is its cast, not the kernel's own buffer."""
  dtype = jnp.bfloat16
  b, t, s, n, n_kv, h = 2, 333, 200, 4, 2, 72
  window = (8, 0)
  q, k, v, dout, dlse = _inputs(11, dtype, b, t, s, n, n_kv, h)
  scale = 1 / math.sqrt(h)
  cfg = AttnConfig(scale=scale, window_left=window[0], window_right=window[1])

  # keep_unused: jit would otherwise drop the unused donated parameters, and their alias.
  fwd_into = jax.jit(lambda o0, lse0, q, k, v: _cuda.fwd(q, k, v, Extras(), cfg),
                     donate_argnums=(0, 1), keep_unused=True)
  poison = lambda shape, dt: jnp.full(shape, jnp.nan, dt)  # noqa: E731
  args = (poison((b, t, n, h), dtype), poison((b, n, t), jnp.float32), q, k, v)
  out, lse = _aliased(fwd_into, 2, *args)(*args)

  # The raw backward target, so that the jit holds nothing but the custom call (delta and
  # the dq cast, which _cuda.bwd adds, are computed outside it).
  delta = jnp.swapaxes(jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1),
                       -1, -2) - dlse
  bwd_call = jax.ffi.ffi_call("jax_flash_bwd", (
      jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, dtype),
      jax.ShapeDtypeStruct(v.shape, dtype)))
  bwd_into = jax.jit(
      lambda dk0, dv0, *operands: bwd_call(*operands, **_cuda._attrs(cfg, 0)),
      donate_argnums=(0, 1), keep_unused=True)
  args = (poison(k.shape, dtype), poison(v.shape, dtype), q, k, v, dout, lse, delta)
  dq_accum, dk, dv = _aliased(bwd_into, 2, *args)(*args)
  dq = dq_accum.astype(dtype)

  refs = _references(q, k, v, dout, dlse, scale=scale, window=window)
  _check_all((out, lse, dq, dk, dv), refs, dtype)
  assert np.all(np.asarray(out, np.float32)[:, s + window[0]:] == 0)


@gpu_test
def test_forward_is_bitwise_deterministic():
  dtype = jnp.bfloat16
  q, k, v, _, _ = _inputs(7, dtype, 2, 777, 777, 8, 2, 128)
  cfg = AttnConfig(scale=1 / math.sqrt(128), window_left=UNBOUNDED, window_right=0)
  fwd = jax.jit(lambda q, k, v: _cuda.fwd(q, k, v, Extras(), cfg))
  first = jax.device_get(fwd(q, k, v))
  second = jax.device_get(fwd(q, k, v))
  for a, b in zip(first, second):
    assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


# ---- the public API ----------------------------------------------------------------------


def _window_kwargs(window):
  if window == FULL:
    return {}
  if window == CAUSAL:
    return dict(is_causal=True)
  return dict(local_window_size=tuple(None if w == UNBOUNDED else w for w in window))


@gpu_test
@pytest.mark.parametrize("case", [
    ("bf16", 2, 200, 300, 8, 2, 128, CAUSAL),
    ("fp16", 1, 129, 129, 4, 1, 64, (16, 4)),
    ("bf16", 1, 97, 61, 2, 2, 256, FULL),
], ids=_case_id)
def test_public_api(case):
  dtype_name, b, t, s, n, n_kv, h, window = case
  dtype = _DTYPES[dtype_name]
  q, k, v, dout, dlse = _inputs(_seed("api", *case), dtype, b, t, s, n, n_kv, h)

  def attention(q, k, v):
    return jax_flash.attention(q, k, v, return_lse=True, implementation="cuda",
                               **_window_kwargs(window))

  @jax.jit
  def run(q, k, v, dout, dlse):
    (out, lse), vjp = jax.vjp(attention, q, k, v)
    return (out, lse) + vjp((dout, dlse))

  results = run(q, k, v, dout, dlse)
  refs = _references(q, k, v, dout, dlse, scale=1 / math.sqrt(h), window=window)
  _check_all(results, refs, dtype)
  assert "jax_flash_fwd" in run.lower(q, k, v, dout, dlse).as_text()


@gpu_test
@pytest.mark.parametrize("path", ["public_api", "ffi_broadcast_all"])
def test_vmap_over_queries(path):
  """vmap over q (and dout) with k, v shared. public_api: jax_flash.attention under
  vmap(grad). ffi_broadcast_all: _cuda.fwd/bwd vmapped directly, so ffi_call's
  broadcast_all hands the handlers 5-D operands whose leading dims they fold into B."""
  dtype = jnp.bfloat16
  q, _, _, dout, _ = _inputs(13, dtype, 3 * 2, 150, 150, 4, 2, 64)
  _, k, v, _, _ = _inputs(14, dtype, 2, 150, 150, 4, 2, 64)
  q, dout = q.reshape(3, 2, 150, 4, 64), dout.reshape(3, 2, 150, 4, 64)
  cfg = AttnConfig(scale=1 / 8, window_left=UNBOUNDED, window_right=0)

  if path == "public_api":
    def grads(q, k, v, dout):
      def loss(q, k, v):
        out = jax_flash.attention(q, k, v, is_causal=True, implementation="cuda")
        return jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32)), out
      (dq, dk, dv), out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
      return out, dq, dk, dv
  else:
    def grads(q, k, v, dout):
      out, lse = _cuda.fwd(q, k, v, Extras(), cfg)
      dq, dk, dv, _ = _cuda.bwd(q, k, v, Extras(), out, lse, dout, None, cfg)
      return out, dq, dk, dv
  out, dq, dk, dv = jax.jit(jax.vmap(grads, in_axes=(0, None, None, 0)))(q, k, v, dout)

  # Reference: the same 3 x 2 problems as one batch of 6 with k, v repeated; dk, dv of
  # the vmapped call are per slice, as are those of the repeated k, v.
  rep = lambda x: jnp.tile(x, (3, 1, 1, 1))  # noqa: E731
  refs = _references(q.reshape(6, 150, 4, 64), rep(k), rep(v), dout.reshape(6, 150, 4, 64),
                     jnp.zeros((6, 4, 150), jnp.float32), scale=1 / 8, window=CAUSAL)
  ref, naive = refs["ref"], refs["naive"]
  _assert_close("out", out.reshape(6, 150, 4, 64), ref[0], naive[0], dtype)
  _assert_close("dq", dq.reshape(6, 150, 4, 64), ref[2], naive[2], dtype)
  _assert_close("dk", dk.reshape(6, 150, 2, 64), ref[3], naive[3], dtype)
  _assert_close("dv", dv.reshape(6, 150, 2, 64), ref[4], naive[4], dtype)


# ---- kernels through _cuda.fwd / _cuda.bwd ---------------------------------------------

# dtype, B, T, S, N, K, H, (window_left, window_right)
CASES = [
    ("bf16", 2, 128, 128, 4, 4, 64, FULL),
    ("fp16", 2, 128, 128, 4, 4, 64, FULL),
    ("bf16", 1, 1, 17, 4, 4, 128, FULL),          # one query row
    ("fp16", 3, 17, 1, 2, 2, 128, FULL),          # one key
    ("fp16", 2, 1, 1, 2, 1, 32, CAUSAL),          # one of each
    ("bf16", 1, 1000, 1000, 8, 2, 128, CAUSAL),   # GQA 4
    ("fp16", 1, 1000, 1000, 8, 1, 64, CAUSAL),    # MQA
    ("bf16", 1, 1000, 4097, 16, 2, 64, FULL),     # GQA 8, T < S
    ("fp16", 1, 4097, 1000, 4, 4, 128, CAUSAL),   # T > S, causal top-left aligned
    ("bf16", 1, 4097, 4097, 2, 2, 128, CAUSAL),
    ("bf16", 2, 333, 333, 4, 4, 32, (64, 0)),     # sliding window
    ("fp16", 2, 257, 301, 4, 2, 40, (32, 16)),    # two-sided window
    ("bf16", 1, 300, 100, 4, 4, 72, (8, 0)),      # rows past S + 8 see no key
    ("fp16", 2, 200, 150, 4, 4, 96, (0, UNBOUNDED)),  # keys j >= i only; rows >= S empty
    ("bf16", 1, 513, 513, 4, 4, 192, FULL),
    ("fp16", 1, 513, 513, 4, 1, 192, CAUSAL),
    ("fp16", 1, 259, 259, 4, 4, 72, FULL),
    ("bf16", 1, 259, 259, 8, 2, 96, CAUSAL),
    ("bf16", 1, 130, 70, 4, 4, 40, FULL),
    ("bf16", 2, 64, 80, 2, 2, 256, (3, 3)),
    ("fp16", 1, 700, 385, 2, 1, 256, CAUSAL),
    # Hung once on an H100 with in-progress kernels (2026-11-21); passes since.
    ("bf16", 1, 385, 700, 2, 2, 256, FULL),
]


@gpu_test
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernels_match_reference(case):
  dtype_name, b, t, s, n, n_kv, h, window = case
  dtype = _DTYPES[dtype_name]
  q, k, v, dout, dlse = _inputs(_seed(*case), dtype, b, t, s, n, n_kv, h)
  scale = 1.1 / math.sqrt(h)
  cfg = AttnConfig(scale=scale, window_left=window[0], window_right=window[1])
  # Half the cases also differentiate through lse (its cotangent enters delta).
  with_dlse = _seed(*case) % 2 == 0
  if not with_dlse:
    dlse = jnp.zeros_like(dlse)
  results = _run_kernels(q, k, v, dout, dlse if with_dlse else None, cfg)
  assert results[0].dtype == dtype and results[1].dtype == jnp.float32
  assert results[1].shape == (b, n, t)
  refs = _references(q, k, v, dout, dlse, scale=scale, window=window)
  _check_all(results, refs, dtype)


# Both forward families on Hopper: the sm90 kernel (the default on cc 9.0) and the portable
# sm80 one, each against the reference, and the backward run on either forward's outputs.
BOTH_PATHS_CASES = [CASES[i] for i in (0, 1, 5, 7, 8, 11, 13, 14, 20, 21)]


@gpu_test
@pytest.mark.parametrize("case", BOTH_PATHS_CASES, ids=_case_id)
def test_sm90_and_sm80_forward_paths(case):
  if 90 not in _cuda._ext.built_archs() or jax.devices()[0].compute_capability != "9.0":
    pytest.skip("needs a Hopper GPU (cc 9.0) and a build with the sm90 kernels")
  dtype_name, b, t, s, n, n_kv, h, window = case
  dtype = _DTYPES[dtype_name]
  q, k, v, dout, dlse = _inputs(_seed(*case) + 1, dtype, b, t, s, n, n_kv, h)
  cfg = AttnConfig(scale=1.0 / math.sqrt(h), window_left=window[0], window_right=window[1])
  refs = _references(q, k, v, dout, dlse, scale=cfg.scale, window=window)
  for arch in (90, 80):
    with _cuda.force_arch(arch):  # traced inside the block: a fresh function each time
      fwd = jax.jit(lambda q, k, v: _cuda.fwd(q, k, v, Extras(), cfg))
      out, lse = jax.block_until_ready(fwd(q, k, v))
    grads = jax.block_until_ready(_kernel_bwd(q, k, v, out, lse, dout, dlse, cfg))
    _check_all((out, lse) + grads, refs, dtype)


# ---- long sequence ---------------------------------------------------------------------


@gpu_test
@pytest.mark.slow
def test_seqlen_131072_runs_in_linear_memory():
  """B=1, T=S=131072, N=16, H=128, bf16, causal: fwd + bwd run, the peak device memory stays
  within 16 x |q| (the buffers themselves take ~10 x |q|; one head's T x S scores alone
  would be 64 x |q|), and rows at both ends match the reference (a row's out, lse and dq
  depend only on that row's query, so they can be checked against the full keys)."""
  dtype = jnp.bfloat16
  b, t, n, h = 1, 131072, 16, 128
  q, k, v, dout, _ = _inputs(17, dtype, b, t, t, n, n, h)
  jax.block_until_ready((q, k, v, dout))
  scale = 1 / math.sqrt(h)
  cfg = AttnConfig(scale=scale, window_left=UNBOUNDED, window_right=0)
  dlse = jnp.zeros((b, n, t), jnp.float32)
  results = _run_kernels(q, k, v, dout, None, cfg)
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    assert stats["peak_bytes_in_use"] <= 16 * q.nbytes, stats
  for name, x in zip(("out", "lse", "dq", "dk", "dv"), results):
    assert bool(jnp.all(jnp.isfinite(x))), f"{name} has non-finite elements"
  out, lse, dq = results[:3]
  for start in (0, t - 64):
    rows = slice(start, start + 64)
    refs = _references(q[:, rows], k, v, dout[:, rows], dlse[:, :, rows], scale=scale,
                       window=CAUSAL, q_offset=start)
    _check_all((out[:, rows], lse[:, :, rows], dq[:, rows]), refs, dtype,
               names=("out", "lse", "dq"))


# ---- routing (no GPU needed) -------------------------------------------------------------


def test_unsupported_reasons():
  sds = lambda shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
  q, kv = sds((2, 16, 4, 64)), sds((2, 16, 2, 64))
  cfg = AttnConfig(scale=0.125)
  assert _cuda.unsupported_reason(q, kv, kv, Extras(), cfg) is None
  # Every extra and softcap run in the kernels (tests/test_gpu_extras.py).
  assert _cuda.unsupported_reason(q, kv, kv, Extras(bias=q, q_seqlen=q), cfg) is None
  assert _cuda.unsupported_reason(q, kv, kv, Extras(),
                                  AttnConfig(scale=0.125, softcap=30.0)) is None
  long_kv = sds((1, 2**24 + 8, 2, 64))  # rows past 2^24 keys (test_gpu_extras.py runs one)
  assert _cuda.unsupported_reason(
      q, long_kv, long_kv, Extras(bias=sds((1, 1, 16, 2**24 + 8), jnp.float32)), cfg) is None
  assert "dtype float32" in _cuda.unsupported_reason(
      sds(q.shape, jnp.float32), sds(kv.shape, jnp.float32), sds(kv.shape, jnp.float32),
      Extras(), cfg)
  assert "mixed" in _cuda.unsupported_reason(q, sds(kv.shape, jnp.float16), kv, Extras(), cfg)
  assert "Hv=32" in _cuda.unsupported_reason(q, kv, sds((2, 16, 2, 32)), Extras(), cfg)
  odd = sds((2, 16, 4, 36))
  assert "multiple of 8" in _cuda.unsupported_reason(odd, sds((2, 16, 2, 36)),
                                                     sds((2, 16, 2, 36)), Extras(), cfg)
  big = sds((2, 16, 4, 264))
  assert "264 >" in _cuda.unsupported_reason(big, sds((2, 16, 2, 264)),
                                             sds((2, 16, 2, 264)), Extras(), cfg)
  assert "empty" in _cuda.unsupported_reason(sds((2, 0, 4, 64)), kv, kv, Extras(), cfg)


def test_kernels_available_gives_a_reason_without_a_gpu():
  cpu = jax.devices("cpu")[0]
  assert _cuda.kernels_available(cpu) == "no CUDA device (device is cpu)"
