"""GPU tests of the kernels' extras (issue 5): lengths, segment ids, bias (+ dbias), dense
masks and softcap, alone and combined with causal/windows, on every forward family.

Each case runs `jax_flash.attention(..., implementation="cuda")` forward and backward and
checks out, lse, dq, dk, dv and dbias with the accuracy rule of tests/test_gpu_kernels.py
(at most 2x the error of the naive computation in the input dtype, against the float32
one). The naive computation here takes the dense visibility matrix from tests/reference.py
(`visible_mask`, written from the API's definitions) and shares no code with the package.
Inputs are fresh normal samples; segment ids and lengths are random per case.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _cuda
from reference import make_features, split_kwargs, visible_mask
from test_gpu_kernels import _DTYPES, _assert_close, gpu_test, naive_dense, require_built


def _families():
  """The forward families to test on this device: sm90 and sm80 on Hopper, else sm80."""
  if _cuda.kernels_available() is not None:
    return [0]
  on_hopper = (90 in _cuda._ext.built_archs()
               and jax.devices()[0].compute_capability == "9.0")
  return [90, 80] if on_hopper else [80]


@functools.partial(jax.jit, static_argnames=("scale", "softcap"))
def _references(q, k, v, bias, vis, dout, dlse, *, scale, softcap):
  """{"ref": (out, lse, dq, dk, dv[, dbias]) in float32, "naive": the same in the dtype}."""
  results = {}
  for name, low in (("ref", False), ("naive", True)):
    cast = (lambda x: x) if low else (lambda x: x.astype(jnp.float32))
    fn = functools.partial(naive_dense, visible=vis, scale=scale, softcap=softcap,
                           low_precision=low)
    (out, lse), vjp = jax.vjp(fn, cast(q), cast(k), cast(v), bias)
    grads = vjp((dout.astype(out.dtype), dlse))
    results[name] = (out, lse) + tuple(g for g in grads if g is not None)
  return results


def _kernels(q, k, v, bias, dout, dlse, arrays, static, arch):
  """(out, lse, dq, dk, dv[, dbias]) from the kernels, forward family `arch`."""
  def fn(q, k, v, bias):
    return jax_flash.attention(q, k, v, bias, return_lse=True, implementation="cuda",
                               **arrays, **static)

  with _cuda.force_arch(arch):  # traced inside the block
    (out, lse), vjp = jax.vjp(jax.jit(fn), q, k, v, bias)
    grads = vjp((dout, dlse))
  return jax.block_until_ready((out, lse) + tuple(g for g in grads if g is not None))


def _run_case(feature, dtype_name, b, t, s, n, n_kv, h, arch, features=None):
  seed = zlib.crc32(repr((feature, dtype_name, b, t, s, n, n_kv, h, arch)).encode())
  rng = np.random.default_rng(seed)
  dtype = _DTYPES[dtype_name]
  require_built(dtype, h)
  kw = features if features is not None else make_features(rng, feature, b, t, s, n)
  arrays, static = split_kwargs(kw)
  bias = arrays.pop("bias", None)
  q, k, v, dout = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in
                   ((b, t, n, h), (b, s, n_kv, h), (b, s, n_kv, h), (b, t, n, h)))
  dlse = jnp.asarray(rng.standard_normal((b, n, t)), jnp.float32)
  scale = static.get("scale", 1.0 / np.sqrt(h))
  softcap = static.get("softcap")
  mask_kw = {k_: kw[k_] for k_ in ("is_causal", "local_window_size", "query_seq_lengths",
                                    "key_value_seq_lengths", "q_segment_ids",
                                    "kv_segment_ids", "mask") if k_ in kw}
  vis = jnp.asarray(visible_mask(b, n, t, s, **mask_kw))
  refs = _references(q, k, v, bias, vis, dout, dlse, scale=float(scale), softcap=softcap)
  got = _kernels(q, k, v, bias, dout, dlse, arrays, static, arch)
  names = ("out", "lse", "dq", "dk", "dv", "dbias")
  for name, x, ref, naive in zip(names, got, refs["ref"], refs["naive"]):
    _assert_close(f"{name} (sm{arch})", x, ref, naive, dtype)


FEATURES = ["lengths", "segments", "softcap", "bias_full", "bias_bcast", "bias_2d", "mask",
            "causal_window", "everything"]
# (dtype, B, T, S, N, K, H): odd sizes, T != S, GQA; head dims of each instantiated size.
SHAPES = [("bf16", 2, 97, 131, 4, 2, 64), ("fp16", 1, 200, 77, 2, 1, 128),
          ("bf16", 2, 150, 150, 2, 2, 256)]


@gpu_test
@pytest.mark.parametrize("arch", _families())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("feature", FEATURES)
def test_feature(feature, shape, arch):
  _run_case(feature, *shape, arch)


def _packed(rng, b, length, docs):
  """Segment ids of `docs` packed documents of random lengths per row, sorted."""
  ids = np.zeros((b, length), np.int32)
  for row in range(b):
    cuts = np.sort(rng.choice(np.arange(1, length), docs - 1, replace=False))
    ids[row] = np.searchsorted(cuts, np.arange(length), side="right")
  return ids


@gpu_test
@pytest.mark.parametrize("arch", _families())
@pytest.mark.parametrize("dtype_name", ["bf16", "fp16"])
def test_packed_documents_skip_tiles(dtype_name, arch):
  """Long packed sequences, where most key tiles of a query tile hold other documents and
  are skipped: causal + segments + padding lengths, the training setting."""
  rng = np.random.default_rng(11)
  b, t = 2, 1500
  ids = _packed(rng, b, t, 6)
  kw = dict(is_causal=True, q_segment_ids=ids, kv_segment_ids=ids,
            query_seq_lengths=np.array([t, 1201], np.int32),
            key_value_seq_lengths=np.array([t, 1201], np.int32))
  _run_case("packed", dtype_name, b, t, t, 4, 2, 128, arch, features=kw)


@gpu_test
@pytest.mark.parametrize("arch", _families())
def test_packed_causal_documents_over_many_tiles(arch):
  """Packed causal documents with several tiles per multiprocessor (2 x 16 heads x 32
  q-blocks = 1024 tiles): the sm90 forward takes them in its dynamic order (a global
  counter, scheduler.cuh), so CTAs finish in any order; every output row must still be
  written once, by its own tile."""
  rng = np.random.default_rng(16)
  b, t = 2, 4096
  ids = _packed(rng, b, t, 11)
  kw = dict(is_causal=True, q_segment_ids=ids, kv_segment_ids=ids)
  _run_case("packed_many", "bf16", b, t, t, 16, 4, 64, arch, features=kw)


@gpu_test
@pytest.mark.parametrize("arch", _families())
def test_sliding_window_over_many_tiles(arch):
  """A sliding window without other extras over 2 x 16 heads x 32 q-blocks = 1024 tiles:
  the sm90 forward takes them in its dynamic order too (scheduler.cuh), several per CTA."""
  b, t = 2, 4096
  _run_case("window_many", "bf16", b, t, t, 16, 4, 128, arch,
            features=dict(local_window_size=(300, 20)))


@gpu_test
@pytest.mark.parametrize("arch", _families())
@pytest.mark.parametrize("h", [64, 128])
def test_long_causal_rows(arch, h):
  """Causal rows past the rows-first limit (fwd_launch.cuh tile_order: 32 q-blocks of 192 at
  hdim 64, 64 of 128 at hdim 128): the sm90 forward takes them heavy first in sections of 4
  (batch, head) pairs, dynamically. hdim 64: 6400 rows (34 q-blocks), 6 heads in sections of
  4 and 2, GQA 3:1 puts a K/V head in two sections; hdim 128: 8320 rows (65 q-blocks), 3
  heads of one K/V head in one narrower section (3 heads keep the float32 reference small)."""
  t, n, n_kv = (6400, 6, 2) if h == 64 else (8320, 3, 1)
  _run_case("causal_long", "bf16", 1, t, t, n, n_kv, h, arch, features=dict(is_causal=True))


@gpu_test
@pytest.mark.parametrize("arch", _families())
def test_unsorted_segments_and_sliding_window(arch):
  """Segment ids in no order (tile ranges overlap without matching everywhere) with a
  sliding window over a long sequence, and lengths of 0 (rows that see nothing)."""
  rng = np.random.default_rng(12)
  b, t = 2, 700
  q_ids = rng.integers(0, 4, (b, t)).astype(np.int32)
  kv_ids = rng.integers(0, 4, (b, t)).astype(np.int32)
  kw = dict(local_window_size=(100, 30), q_segment_ids=q_ids, kv_segment_ids=kv_ids,
            key_value_seq_lengths=np.array([0, 650], np.int32))
  _run_case("unsorted", "bf16", b, t, t, 2, 1, 64, arch, features=kw)


@gpu_test
@pytest.mark.bigmem
@pytest.mark.parametrize("arch", _families())
def test_bias_past_2_31_elements(arch):
  """A [T, S] bias of 130 rows of 2^24 + 72 keys: elements of rows 127-129 lie past 2^31, so
  only 64-bit offsets in the kernels (forward, backward, dbias) find them. Segment ids keep
  the work small: rows 0-127 see the last 136 keys only, rows 128-129 every other key. The
  bias is wide (4 x normal), so a few keys dominate each row: the check measures addressing,
  not the rounding of a 2^24-term sum. Rows 0-1 and 126-129 are compared with the naive
  computation on those rows alone (dk, dv sum over every row and are left out)."""
  t, s, h = 130, 2**24 + 72, 8
  if jax.devices()[0].memory_stats()["bytes_limit"] < 48 * 2**30:
    pytest.skip("needs about 30 GB of device memory (bias and dbias: 8.7 GB each)")
  require_built(jnp.bfloat16, h)
  keys = jax.random.split(jax.random.key(15), 6)
  q, dout = (jax.random.normal(kk, (1, t, 1, h), jnp.bfloat16) for kk in keys[:2])
  k, v = (jax.random.normal(kk, (1, s, 1, h), jnp.bfloat16) for kk in keys[2:4])
  bias = 4.0 * jax.random.normal(keys[4], (1, 1, t, s), jnp.float32)
  dlse = jax.random.normal(keys[5], (1, 1, t), jnp.float32)
  q_ids = jnp.asarray(np.arange(t) < 128, jnp.int32)[None]
  kv_ids = jnp.asarray(np.arange(s) >= s - 136, jnp.int32)[None]
  arrays = dict(q_segment_ids=q_ids, kv_segment_ids=kv_ids)
  row_sets = (slice(0, 2), slice(126, 130))
  bias_rows = [bias[:, :, rows] for rows in row_sets]
  out, lse, dq, _, _, dbias = _kernels(q, k, v, bias, dout, dlse, arrays, {}, arch)
  del bias
  for rows, b_rows in zip(row_sets, bias_rows):
    vis = (q_ids[0, rows, None] == kv_ids[0, None, :])[None, None]
    refs = _references(q[:, rows], k, v, b_rows, vis, dout[:, rows], dlse[:, :, rows],
                       scale=float(1 / np.sqrt(h)), softcap=None)
    got = (out[:, rows], lse[:, :, rows], dq[:, rows], dbias[:, :, rows])
    for name, x, i in zip(("out", "lse", "dq", "dbias"), got, (0, 1, 2, 5)):
      _assert_close(f"{name} rows {rows.start}-{rows.stop - 1} (sm{arch})", x, refs["ref"][i],
                    refs["naive"][i], jnp.bfloat16)


@gpu_test
def test_kernels_take_every_feature_under_implementation_none():
  """Routing: with the kernels available, implementation=None runs them for every extra
  (no fallback log), i.e. the compiled program holds the custom call."""
  rng = np.random.default_rng(13)
  q = jnp.asarray(rng.standard_normal((1, 64, 2, 64)), jnp.bfloat16)
  kw = make_features(rng, "everything", 1, 64, 64, 2)
  arrays, static = split_kwargs(kw)
  fn = jax.jit(lambda q: jax_flash.attention(q, q, q, **arrays, **static))
  assert "jax_flash_fwd" in fn.lower(q).as_text()


@gpu_test
@pytest.mark.parametrize("t,s,kind", [(16384, 16384, "docs"), (2047, 1301, "docs"),
                                      (333, 77, "rising"), (1, 40, "random"),
                                      (50000, 35, "rising"), (17, 16400, "random")])
def test_device_segment_ranges_match_the_specification(t, s, kind):
  """The segment-range kernel (csrc/common/segment_ranges.cu) against its jax.numpy
  specification (_cuda.segment_ranges, itself checked by brute force in
  tests/test_segment_ranges.py), element for element: packed documents (sorted ids), rising
  ids with noise and swaps (the envelopes matter), random ids; lengths that are not multiples
  of 16 (rows not 16-byte aligned), sides of very different lengths, more than one 1024-chunk
  tile per side, arrays in global scratch rather than shared memory (T + S > 44k), and
  leading dims of a vmap."""
  rng = np.random.default_rng(t + 7 * s)
  def ids(length):
    if kind == "docs":
      cuts = np.sort(rng.choice(np.arange(1, length), size=min(7, length - 1), replace=False))
      return np.searchsorted(cuts, np.arange(length), side="right")
    if kind == "rising":
      x = np.arange(length) // 23 + rng.integers(-2, 3, size=length)
      i, j = rng.integers(0, length, size=2)
      x[i], x[j] = x[j], x[i]
      return x
    return rng.integers(-5, 5, size=length)
  q_ids = jnp.asarray(np.stack([ids(t) for _ in range(3)]), jnp.int32)
  kv_ids = jnp.asarray(np.stack([ids(s) for _ in range(3)]), jnp.int32)
  got_q, got_kv = jax.jit(_cuda.device_segment_ranges)(q_ids, kv_ids)
  np.testing.assert_array_equal(got_q, _cuda.segment_ranges(q_ids, kv_ids))
  np.testing.assert_array_equal(got_kv, _cuda.segment_ranges(kv_ids, q_ids))
  # vmap: the leading dims flatten into the kernel's batch.
  vq, vkv = jax.vmap(_cuda.device_segment_ranges)(q_ids[:, None], kv_ids[:, None])
  np.testing.assert_array_equal(vq[:, 0], got_q)
  np.testing.assert_array_equal(vkv[:, 0], got_kv)
