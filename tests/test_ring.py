"""`jax_flash.ring`: ring attention inside the user's own shard_map, the zig-zag layout
helpers, and the ring's treatment of segment ids, lengths and empty rows (4 CPU devices of
8; `jax.jit` sharding of the sequence axis is covered by test_sharding.py).

The CPU devices must be configured before JAX starts its backends: if another test module
started them first, `test_module_in_subprocess` reruns this module in a fresh process.
"""

import json
import os
import re
import subprocess
import sys

import eight_devices  # first: asks for 8 CPU devices before JAX starts
from eight_devices import assert_close
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_flash
from jax_flash import ring

RING = 4  # devices on the ring


@pytest.fixture
def devices():
  eight_devices.require()


def test_module_in_subprocess():
  eight_devices.rerun_module(__file__)


def seq_mesh():
  return Mesh(np.array(jax.devices()[:RING]), ("seq",), axis_types=(AxisType.Auto,))


def rand(rng, shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def inputs(seed, b=2, t=32, s=None, n=4, k=2, h=16, hv=8):
  rng = np.random.default_rng(seed)
  s = t if s is None else s
  q, kk, v = rand(rng, (b, t, n, h)), rand(rng, (b, s, k, h)), rand(rng, (b, s, k, hv))
  dout, dlse = rand(rng, (b, t, n, hv)), rand(rng, (b, n, t))
  return q, kk, v, dout, dlse


def fwd_bwd(attend, **kw):
  """(out, lse) and (dq, dk, dv) of `attend` for random cotangents of out and lse."""
  def run(q, k, v, dout, dlse, *extra):
    f = lambda q, k, v: attend(q, k, v, *extra, return_lse=True, **kw)
    res, vjp = jax.vjp(f, q, k, v)
    return res, vjp((dout, dlse))
  return run


def dense(q, k, v, *extra, **kw):
  return jax_flash.attention(q, k, v, implementation="xla", **kw)


ROWS, LSE = P(None, "seq"), P(None, None, "seq")
OUT_SPECS = ((ROWS, LSE), (ROWS, ROWS, ROWS))


def permutes(hlo: str) -> list[str]:
  """The collective-permute instructions of compiled HLO (async on GPU, not on CPU)."""
  return [line for line in hlo.splitlines()
          if re.search(r"= \S+ collective-permute(-start)?\(", line)]


def in_shard_map(run, n_extra=0, check_vma=False):
  return jax.jit(jax.shard_map(run, mesh=seq_mesh(), in_specs=(ROWS,) * 4 + (LSE,)
                               + (ROWS,) * n_extra, out_specs=OUT_SPECS,
                               check_vma=check_vma))


# -- layout helpers ---------------------------------------------------------------------------
def test_zigzag_layout():
  order = ring.zigzag_order(16, 4)  # 8 chunks of 2: shard d holds chunks d and 7 - d
  assert order.tolist() == [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 3)))
  assert np.array_equal(ring.from_zigzag(ring.to_zigzag(x, 4), 4), x)
  with pytest.raises(ValueError, match="multiple of 2 \\* num_shards = 8"):
    ring.zigzag_order(12, 4)


# -- values and gradients ---------------------------------------------------------------------
VMA = [False, True]  # shard_map with and without check_vma


@pytest.mark.parametrize("check_vma", VMA, ids=["no_vma", "vma"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_ring_attention_matches_dense(devices, is_causal, check_vma):
  args = inputs(seed=int(is_causal))
  want = jax.jit(fwd_bwd(dense, is_causal=is_causal))(*args)
  run = fwd_bwd(ring.ring_attention, axis_name="seq", is_causal=is_causal,
                implementation="xla")
  assert_close(in_shard_map(run, check_vma=check_vma)(*args), want)


def test_zigzag_layout_skips_the_permutation(devices):
  args = inputs(seed=2)
  want = jax.jit(fwd_bwd(dense, is_causal=True))(*args)
  zig = lambda x, axis=1: ring.to_zigzag(x, RING, axis)
  unzig = lambda x, axis=1: ring.from_zigzag(x, RING, axis)
  run = fwd_bwd(ring.ring_attention, axis_name="seq", is_causal=True, layout="zigzag",
                implementation="xla")
  f = in_shard_map(run)
  q, k, v, dout, dlse = args
  (out, lse), grads = f(zig(q), zig(k), zig(v), zig(dout), zig(dlse, 2))
  assert_close(((unzig(out), unzig(lse, 2)), tuple(map(unzig, grads))), want)
  # Already in zig-zag order: the only collectives are the ring's own K/V shifts.
  contiguous = in_shard_map(fwd_bwd(ring.ring_attention, axis_name="seq", is_causal=True,
                                    implementation="xla"))
  hlo, hlo_contiguous = (g.lower(*args).compile().as_text() for g in (f, contiguous))
  assert 0 < len(permutes(hlo)) < len(permutes(hlo_contiguous))


def test_gqa_cross_attention(devices):
  args = inputs(seed=3, t=16, s=48, n=6, k=3)  # T != S, 2 query heads per K/V head
  want = jax.jit(fwd_bwd(dense))(*args)
  run = fwd_bwd(ring.ring_attention, axis_name="seq", implementation="xla")
  assert_close(in_shard_map(run)(*args), want)


def test_segment_ids(devices):
  args = inputs(seed=4)
  seg = jnp.asarray(np.sort(np.random.default_rng(5).integers(0, 4, (2, 32)), 1), jnp.int32)
  def attend(q, k, v, seg, **kw):
    return ring.ring_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, **kw)

  dense_seg = lambda q, k, v, seg, **kw: dense(q, k, v, q_segment_ids=seg,
                                                kv_segment_ids=seg, **kw)
  want = jax.jit(fwd_bwd(dense_seg, is_causal=True))(*args, seg)
  run = fwd_bwd(attend, axis_name="seq", is_causal=True, implementation="xla")
  assert_close(in_shard_map(run, n_extra=1)(*args, seg), want)


def test_lengths_and_empty_rows(devices):
  """Padding lengths become segment ids in the ring; padded query rows attend to nothing
  and must come out as 0 with lse = -inf, never NaN, through the lse merge."""
  args = inputs(seed=6)
  qlen, kvlen = jnp.array([20, 32], jnp.int32), jnp.array([9, 27], jnp.int32)
  kw = dict(query_seq_lengths=qlen, key_value_seq_lengths=kvlen, is_causal=True)
  want = jax.jit(fwd_bwd(dense, **kw))(*args)
  run = fwd_bwd(ring.ring_attention, axis_name="seq", implementation="xla", **kw)
  got = in_shard_map(run)(*args)
  (out, lse), _ = got
  assert np.all(np.asarray(lse)[0, :, 20:] == -np.inf) and np.all(out[0, 20:] == 0)
  assert not any(np.isnan(np.asarray(x)).any() for x in jax.tree.leaves(got))
  assert_close(got, want)


def test_partitioned_ring_with_lengths(devices):
  """The same through `jax_flash.attention` under jit with the sequence axis sharded."""
  q, k, v, _, _ = inputs(seed=7)
  qlen, kvlen = jnp.array([32, 13], jnp.int32), jnp.array([29, 32], jnp.int32)
  f = lambda q, k, v: dense(q, k, v, query_seq_lengths=qlen, key_value_seq_lengths=kvlen)
  rows = NamedSharding(seq_mesh(), ROWS)
  got = jax.jit(f, in_shardings=(rows,) * 3)(q, k, v)
  assert_close(got, jax.jit(f)(q, k, v))


def test_hlo_moves_only_local_blocks(devices):
  args = inputs(seed=8, t=64, h=8)  # no other dim is 64 or 16 (the local length)
  run = fwd_bwd(ring.ring_attention, axis_name="seq", is_causal=True, implementation="xla")
  hlo = in_shard_map(run).lower(*args).compile().as_text()
  ops = set(re.findall(r"all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute",
                       hlo))
  assert ops == {"collective-permute"}
  dims = {int(d) for line in permutes(hlo)
          for shape in re.findall(r"\[([\d,]+)\]", line.split("collective-permute")[0])
          for d in shape.split(",")}
  assert 64 // RING in dims and 64 not in dims


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["layout", "causal_cross", "lengths_and_segments",
                                  "zigzag_odd"])
def test_errors(devices, what):
  t = 36 if what == "zigzag_odd" else 32  # 36 / 4 devices: shards of 9 rows
  q, k, v, _, _ = inputs(seed=9, t=t, s=64 if what == "causal_cross" else t)
  seg = jnp.zeros((2, 32 // RING), jnp.int32)  # local shards
  kw, message = {
      "layout": (dict(layout="striped"), "layout must be one of"),
      "causal_cross": (dict(is_causal=True), "needs equal query and key lengths"),
      "lengths_and_segments": (
          dict(query_seq_lengths=jnp.array([3, 4]), q_segment_ids=seg, kv_segment_ids=seg),
          "lengths together with segment ids"),
      "zigzag_odd": (dict(layout="zigzag"), "needs even shard lengths, got query 9"),
  }[what]
  f = jax.shard_map(lambda q, k, v: ring.ring_attention(q, k, v, axis_name="seq", **kw),
                    mesh=seq_mesh(), in_specs=ROWS, out_specs=ROWS, check_vma=False)
  with pytest.raises(ValueError, match=message):
    jax.jit(f)(q, k, v)


def test_ring_benchmark_smoke(devices, tmp_path):
  """examples/ring_benchmark.py --smoke: the GPU acceptance script runs and checks values."""
  script = os.path.join(os.path.dirname(__file__), "..", "examples", "ring_benchmark.py")
  out = tmp_path / "ring.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
  proc = subprocess.run([sys.executable, script, "--smoke", "--json", str(out)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["check_ok"] and len(report["results"]) == 3
  assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in report["results"])
