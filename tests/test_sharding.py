"""Sharding rules, shard_map, pmap and vmap of `jax_flash.attention` on 8 CPU devices.

Every sharded call is compared with the same call on one device (float32, 1e-5 relative)
on fresh random inputs; compiled HLO is checked for the collectives each layout may use.
The 8 devices must be configured before JAX starts its backends: if another test module
started them first, `test_module_in_subprocess` reruns this module in a fresh process.
"""

import functools
import re

import eight_devices  # first: asks for 8 CPU devices before JAX starts
from eight_devices import TOL, assert_close, rel_err
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_flash

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all",
               "reduce-scatter")


@pytest.fixture
def eight():
  eight_devices.require()


def test_module_in_subprocess():
  eight_devices.rerun_module(__file__)


# -- helpers ----------------------------------------------------------------------------------
def mesh(shape, names, explicit=False):
  kind = AxisType.Explicit if explicit else AxisType.Auto
  devices = np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape)
  return Mesh(devices, names, axis_types=(kind,) * len(names))


def rand(rng, shape, dtype=jnp.float32):
  return jnp.asarray(rng.standard_normal(shape), dtype)


def qkv(seed, b=8, t=32, s=None, n=8, k=4, h=16, hv=8):
  rng = np.random.default_rng(seed)
  s = t if s is None else s
  return rand(rng, (b, t, n, h)), rand(rng, (b, s, k, h)), rand(rng, (b, s, k, hv))


def fwd_bwd(**kw):
  """(out, lse) and the grads of q, k, v (and bias) for random cotangents of both."""
  def run(q, k, v, dout, dlse, bias=None):
    f = lambda q, k, v, bias: jax_flash.attention(q, k, v, bias, return_lse=True,
                                                  implementation="xla", **kw)
    res, vjp = jax.vjp(f, q, k, v, bias)
    return res, vjp((dout, dlse))
  return run


def cotangents(q, v, seed=1):
  rng = np.random.default_rng(seed)
  b, t, n, _ = q.shape
  return rand(rng, (b, t, n, v.shape[-1])), rand(rng, (b, n, t))


def padded(spec, rank=4):
  return tuple(spec) + (None,) * (rank - len(spec))


def collectives(compiled) -> set[str]:
  return set(re.findall("|".join(COLLECTIVES), compiled.as_text()))


def naive_f64(q, k, v, is_causal=False, q_seg=None, kv_seg=None):
  """Plain softmax attention in numpy float64 (GQA by repeating K/V heads)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  vis = np.ones(s.shape[-2:], bool)
  if is_causal:
    vis = np.tril(vis)
  vis = np.broadcast_to(vis, s.shape)
  if q_seg is not None:
    vis = vis & (np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :])
  s = np.where(vis, s, -np.inf)
  m = s.max(-1, keepdims=True)
  p = np.where(vis, np.exp(s - m), 0.0)
  return np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v)


# -- values, gradients and HLO under jit ----------------------------------------------------
LAYOUTS = {
    # name: (mesh shape, mesh axes, q/k/v spec, sequence sharded)
    "data": ((8,), ("data",), P("data"), False),
    "model": ((4,), ("model",), P(None, None, "model"), False),
    "data_x_model": ((2, 4), ("data", "model"), P("data", None, "model"), False),
    "data_x_seq": ((2, 4), ("data", "seq"), P("data", "seq"), True),
    "seq": ((8,), ("seq",), P(None, "seq"), True),
    "seq_x_model": ((2, 4), ("seq", "model"), P(None, "seq", "model"), True),
}


@functools.lru_cache
def unsharded_case(is_causal):
  """Inputs (GQA: 8 query heads, 4 K/V heads), cotangents and the one-device result."""
  q, k, v = qkv(seed=int(is_causal))
  dout, dlse = cotangents(q, v)
  args = (q, k, v, dout, dlse)
  return args, jax.jit(fwd_bwd(is_causal=is_causal))(*args)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_unsharded(eight, layout, is_causal):
  shape, names, spec, seq = LAYOUTS[layout]
  (q, k, v, dout, dlse), want = unsharded_case(is_causal)
  run = fwd_bwd(is_causal=is_causal)
  m = mesh(shape, names)
  b, t, n, _ = padded(spec)
  rows, lse_spec = NamedSharding(m, spec), NamedSharding(m, P(b, n, t))
  f = jax.jit(run, in_shardings=(rows, rows, rows, rows, lse_spec),
              out_shardings=((rows, lse_spec), (rows, rows, rows, None)))
  compiled = f.lower(q, k, v, dout, dlse).compile()
  got = compiled(q, k, v, dout, dlse)
  assert_close(got, want)
  if seq:  # ring: K/V move with collective-permute only, never gathered
    assert collectives(compiled) == {"collective-permute"}
  else:  # batch and heads: no communication at all, forward and backward
    assert collectives(compiled) == set()


def test_ring_against_float64_reference(eight):
  q, k, v = qkv(seed=3, b=2, t=64)
  rng = np.random.default_rng(4)
  seg = jnp.asarray(np.sort(rng.integers(0, 3, (2, 64)), axis=1), jnp.int32)
  m = mesh((2, 4), ("data", "seq"))
  rows = NamedSharding(m, P("data", "seq"))
  f = jax.jit(lambda q, k, v, seg: jax_flash.attention(
      q, k, v, is_causal=True, q_segment_ids=seg, kv_segment_ids=seg, implementation="xla"),
      in_shardings=(rows, rows, rows, NamedSharding(m, P("data", "seq"))))
  got = f(q, k, v, seg)
  assert rel_err(got, naive_f64(q, k, v, True, seg, seg)) <= TOL


@pytest.mark.parametrize("layout", ["data_x_model", "data_x_seq"])
def test_explicit_mesh_axes(eight, layout):
  """Explicit axes (jax.make_mesh's default): shardings are part of the types."""
  shape, names, spec, _ = LAYOUTS[layout]
  (q, k, v, dout, dlse), want = unsharded_case(True)
  m = mesh(shape, names, explicit=True)
  b, t, n, h = padded(spec)
  rows, lse = NamedSharding(m, spec), NamedSharding(m, P(b, n, t))
  args = [jax.device_put(x, s) for x, s in zip((q, k, v, dout, dlse), (rows,) * 4 + (lse,))]
  got = jax.jit(fwd_bwd(is_causal=True))(*args)
  (out, _), (dq, _, _, _) = got
  assert padded(out.sharding.spec) == padded(dq.sharding.spec) == (b, t, n, h)
  assert_close(got, want)


def test_head_dim_sharding_is_gathered(eight):
  q, k, v = qkv(seed=6)
  m = mesh((2, 4), ("data", "model"))
  rows = NamedSharding(m, P("data", None, None, "model"))
  f = lambda q, k, v: jax_flash.attention(q, k, v, implementation="xla")
  got = jax.jit(f, in_shardings=(rows,) * 3)(q, k, v)
  assert_close(got, jax.jit(f)(q, k, v))


@pytest.mark.parametrize("explicit", [False, True], ids=["auto", "explicit"])
def test_gqa_heads_must_divide_the_mesh_axis(eight, explicit):
  q, k, v = qkv(seed=7, n=8, k=2)  # query heads split 4 ways, but only 2 K/V heads
  m = mesh((2, 4), ("data", "model"), explicit=explicit)
  rows, kv_rows = NamedSharding(m, P("data", None, "model")), NamedSharding(m, P("data"))
  q, k, v = jax.device_put(q, rows), jax.device_put(k, kv_rows), jax.device_put(v, kv_rows)
  f = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, implementation="xla"))
  message = (r"heads N=8 and key/value heads K=2 are sharded over mesh axes \('model',\) "
             r"of sizes \(4,\)")
  # Explicit axes: a plain ValueError while tracing; Auto axes: raised while compiling.
  with pytest.raises(ValueError if explicit else Exception,
                     match=message if explicit else "ValueError: .*" + message):
    f(q, k, v)


# -- extras ---------------------------------------------------------------------------------
def extras(seed, b=8, n=8, t=32, s=32):
  rng = np.random.default_rng(seed)
  seg = jnp.asarray(np.sort(rng.integers(0, 3, (b, t)), axis=1), jnp.int32)
  return dict(
      mask=jnp.asarray(rng.random((1, 1, t, s)) < 0.9),
      query_seq_lengths=jnp.asarray(rng.integers(t // 2, t + 1, b), jnp.int32),
      key_value_seq_lengths=jnp.asarray(rng.integers(s // 2, s + 1, b), jnp.int32),
      q_segment_ids=seg, kv_segment_ids=seg)


@pytest.mark.parametrize("bias_shape,reduced", [
    ((8, 8, 32, 32), False),  # full bias follows q: no communication
    ((1, 8, 1, 32), True),  # broadcast over the sharded batch: dbias is summed
    ((8, 1, 32, 32), True),  # broadcast over the sharded heads: dbias is summed
], ids=["full", "batch1", "heads1"])
def test_extras_follow_q(eight, bias_shape, reduced):
  q, k, v = qkv(seed=8)
  bias = rand(np.random.default_rng(9), bias_shape)
  ex = extras(10)
  dout, dlse = cotangents(q, v)
  run = lambda q, k, v, dout, dlse, bias, ex: fwd_bwd(is_causal=True, **ex)(
      q, k, v, dout, dlse, bias)
  want = jax.jit(run)(q, k, v, dout, dlse, bias, ex)

  m = mesh((2, 4), ("data", "model"))
  rows, lse_s = NamedSharding(m, P("data", None, "model")), NamedSharding(m, P("data", "model"))
  bias_s = NamedSharding(m, P("data" if bias_shape[0] > 1 else None,
                              "model" if bias_shape[1] > 1 else None))
  ex_s = dict(mask=NamedSharding(m, P()), query_seq_lengths=NamedSharding(m, P("data")),
              key_value_seq_lengths=NamedSharding(m, P("data")),
              q_segment_ids=NamedSharding(m, P("data")),
              kv_segment_ids=NamedSharding(m, P("data")))
  f = jax.jit(run, in_shardings=(rows, rows, rows, rows, lse_s, bias_s, ex_s),
              out_shardings=((rows, lse_s), (rows, rows, rows, bias_s)))
  compiled = f.lower(q, k, v, dout, dlse, bias, ex).compile()
  assert_close(compiled(q, k, v, dout, dlse, bias, ex), want)
  assert collectives(compiled) == ({"all-reduce"} if reduced else set())


@pytest.mark.parametrize("what", ["bias", "window", "causal_cross"])
def test_ring_rejects_what_it_cannot_run(eight, what):
  q, k, v = qkv(seed=11, s=64 if what == "causal_cross" else 32)
  m = mesh((8,), ("seq",))
  rows = NamedSharding(m, P(None, "seq"))
  kw, message = {
      "bias": (dict(bias=rand(np.random.default_rng(12), (8, 1, 32, 32))),
               "bias and mask are not supported"),
      "window": (dict(local_window_size=4), "local_window_size is not supported"),
      "causal_cross": (dict(is_causal=True), "needs equal query and key lengths"),
  }[what]
  f = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, implementation="xla", **kw),
              in_shardings=(rows,) * 3)
  with pytest.raises(Exception, match=r"ValueError: .*runs ring attention, but .*" + message):
    f(q, k, v)


def test_gspmd_partitioner(eight):
  q, k, v = qkv(seed=12)
  dout, dlse = cotangents(q, v)
  run = fwd_bwd(is_causal=True)
  want = jax.jit(run)(q, k, v, dout, dlse)
  m = mesh((2, 4), ("data", "model"))
  rows, lse_s = NamedSharding(m, P("data", None, "model")), NamedSharding(m, P("data", "model"))
  jax.config.update("jax_use_shardy_partitioner", False)
  try:
    f = jax.jit(run, in_shardings=(rows, rows, rows, rows, lse_s),
                out_shardings=((rows, lse_s), (rows, rows, rows, None)))
    compiled = f.lower(q, k, v, dout, dlse).compile()
    got = compiled(q, k, v, dout, dlse)
  finally:
    jax.config.update("jax_use_shardy_partitioner", True)
  assert_close(got, want)
  assert collectives(compiled) == set()


# -- shard_map, pmap, vmap --------------------------------------------------------------------
VMA = [False, True]  # shard_map with and without check_vma


@pytest.mark.parametrize("check_vma", VMA, ids=["no_vma", "vma"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_inside_shard_map(eight, is_causal, check_vma):
  (q, k, v, dout, dlse), want = unsharded_case(is_causal)
  m = mesh((2, 4), ("data", "model"))
  rows, lse_spec = P("data", None, "model"), P("data", "model")
  f = jax.shard_map(fwd_bwd(is_causal=is_causal), mesh=m,
                    in_specs=(rows, rows, rows, rows, lse_spec),
                    out_specs=((rows, lse_spec), (rows, rows, rows, None)),
                    check_vma=check_vma)
  args = [jax.device_put(x, NamedSharding(m, s)) for x, s in
          zip((q, k, v, dout, dlse), (rows, rows, rows, rows, lse_spec))]
  assert_close(jax.jit(f)(*args), want)


def test_inside_partly_manual_shard_map(eight):
  """shard_map over `data` only: `model` stays an automatic axis inside."""
  (q, k, v, dout, dlse), want = unsharded_case(True)
  m = mesh((2, 4), ("data", "model"))
  f = jax.shard_map(fwd_bwd(is_causal=True), mesh=m, axis_names={"data"}, check_vma=False,
                    in_specs=P("data"), out_specs=((P("data"), P("data")), (P("data"),) * 4))
  rows = NamedSharding(m, P("data", None, "model"))
  args = [jax.device_put(x, rows) for x in (q, k, v, dout)]
  got = jax.jit(f)(*args, jax.device_put(dlse, NamedSharding(m, P("data", "model"))))
  assert_close(got, want)


def test_inside_pmap(eight):
  q, k, v = qkv(seed=14, b=16)
  dout, dlse = cotangents(q, v)
  split = lambda x: x.reshape((8, x.shape[0] // 8) + x.shape[1:])
  run = fwd_bwd(is_causal=True)
  got = jax.pmap(run)(*map(split, (q, k, v, dout, dlse)))
  want = jax.jit(run)(q, k, v, dout, dlse)
  assert_close(got, jax.tree.map(split, want))


def test_vmap_folds_into_batch(eight):
  rng = np.random.default_rng(15)
  q, k, v = rand(rng, (3, 2, 16, 4, 8)), rand(rng, (2, 16, 2, 8)), rand(rng, (3, 2, 16, 2, 8))
  bias = rand(rng, (1, 4, 16, 16))  # unbatched, broadcast over the batch
  seg = jnp.asarray(np.sort(rng.integers(0, 2, (3, 2, 16)), axis=-1), jnp.int32)

  def loss(q, k, v, bias, seg):
    out = jax_flash.attention(q, k, v, bias, is_causal=True, q_segment_ids=seg,
                              kv_segment_ids=seg, implementation="xla")
    return (out * jnp.cos(out)).sum()

  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  got = jax.jit(jax.vmap(grad, in_axes=(0, None, 0, None, 0)))(q, k, v, bias, seg)
  want = [grad(q[i], k, v[i], bias, seg[i]) for i in range(3)]
  want = [jnp.stack(w) for w in zip(*want)]
  assert_close(got, want)
