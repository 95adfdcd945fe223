"""Partitioning layer between the custom_vjp core and the per-shard implementations.

`fwd` and `bwd` are the only entry points `_vjp` uses; they receive the implementation
module (`_xla` or `_cuda`) and call its per-shard `fwd`/`bwd` through
`jax.experimental.custom_partitioning`, so under `jit` with sharded inputs:

  * batch (B) and head (N, K) axes shard with no communication at all: every device runs
    the implementation on its own batch rows and heads;
  * GQA keeps each group of G = N / K query heads with its K/V head: N and K are split by
    the same mesh axes, which must divide both head counts (else a ValueError names them);
  * the head dims (H, Hv) are never split: the rule marks them need-replication, so a
    sharded head dim is gathered before the call;
  * extras follow q: their batch/head dims take q's axes, broadcast (size 1) dims and the
    T/S dims of bias/mask stay replicated; lengths [B] follow the batch, segment ids
    [B,T]/[B,S] follow batch and sequence;
  * a sharded query sequence axis (T) runs ring attention over those mesh axes
    (`jax_flash.ring`): K/V are split the same way and travel with `ppermute`.

Dimension legend: B batch, T query length, S key length, N query heads, K key/value heads,
H head dim of q/k, Hv head dim of v ("d" in the rules).

Inside `shard_map` or `pmap` the arrays are already per-device shards, so the
implementation is called directly (with `shard_map(axis_names=...)` over some mesh axes,
the remaining automatic axes are then left to XLA's own propagation through that call).
On one device custom_partitioning lowers to the plain implementation call. The sharding rule
is a Shardy rule; the GSPMD callback (`infer_sharding_from_operands`) is there for users
who switch Shardy off. A split we cannot run raises a ValueError: while tracing when the
mesh axes are Explicit (shardings are part of the types), else during compilation, where
it reaches the caller inside XLA's error (a JaxRuntimeError whose text holds it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from . import _compat, ring
from ._config import AttnConfig, Extras


# -- entry points ---------------------------------------------------------------------------
def fwd(impl, q, k, v, extras, cfg):
  if _compat.manual_axes():  # inside shard_map/pmap: already per shard, see module doc
    return impl.fwd(q, k, v, extras, cfg)

  @jax.custom_batching.custom_vmap
  def call(q, k, v, extras):
    return _fwd_op(q, k, v, extras, cfg, impl, _signature(extras))

  @call.def_vmap
  def call_vmapped(size, batched, q, k, v, extras):
    fold = _Fold(size, batched[0], q)
    out, lse = call(fold(q, batched[0]), fold(k, batched[1]), fold(v, batched[2]),
                    fold.extras(extras, batched[3]))
    return (fold.unfold(out), fold.unfold(lse)), (True, True)

  mesh = _explicit_mesh(q, k, v)
  if mesh is None:
    return call(q, k, v, extras)
  plan = _Plan(mesh, jax.typeof(q), jax.typeof(k), extras, cfg)
  return jax.sharding.auto_axes(call, out_sharding=(plan.rows, plan.lse))(q, k, v, extras)


def bwd(impl, q, k, v, extras, out, lse, dout, dlse, cfg):
  if _compat.manual_axes():
    return impl.bwd(q, k, v, extras, out, lse, dout, dlse, cfg)

  @jax.custom_batching.custom_vmap
  def call(q, k, v, extras, out, lse, dout, dlse):
    return _bwd_op(q, k, v, extras, out, lse, dout, dlse, cfg, impl, _signature(extras))

  @call.def_vmap
  def call_vmapped(size, batched, q, k, v, extras, out, lse, dout, dlse):
    fold = _Fold(size, batched[0], q)
    arrays = [fold(x, bx) for x, bx in zip((q, k, v), batched[:3])]
    arrays += [fold(x, bx) for x, bx in zip((out, lse, dout), batched[4:7])]
    dlse = None if dlse is None else fold(dlse, batched[7])
    dq, dk, dv, dbias = call(*arrays[:3], fold.extras(extras, batched[3]), *arrays[3:],
                             dlse)
    if dbias is not None:
      dbias = fold.unfold_bias(dbias, extras.bias, batched[3].bias)
    grads = (fold.unfold(dq), fold.unfold(dk), fold.unfold(dv), dbias)
    return grads, (True, True, True, None if dbias is None else True)

  if _explicit_mesh(q, k, v) is None:
    return call(q, k, v, extras, out, lse, dout, dlse)
  types = [None if x is None else jax.typeof(x).sharding for x in (q, k, v, extras.bias)]
  return jax.sharding.auto_axes(call, out_sharding=tuple(types))(
      q, k, v, extras, out, lse, dout, dlse)


class _Fold:
  """vmap support: custom_partitioning has no batching rule, so a vmapped axis of size V
  is folded into the batch axis ([V, B, ...] -> [V*B, ...]) around the partitioned call.
  Unbatched operands are broadcast over V; bias/mask are broadcast to the full batch so
  that dbias stays per example."""

  def __init__(self, size: int, q_batched: bool, q):
    self.size = size
    self.b = q.shape[1] if q_batched else q.shape[0]

  def __call__(self, x, batched: bool):
    if not batched:
      x = jnp.broadcast_to(x, (self.size,) + x.shape)
    return x.reshape((self.size * x.shape[1],) + x.shape[2:])

  def _pairwise(self, x, batched: bool):
    x = x if batched else jnp.broadcast_to(x, (self.size,) + x.shape)
    x = jnp.broadcast_to(x, (self.size, self.b) + x.shape[2:])
    return x.reshape((self.size * self.b,) + x.shape[2:])

  def extras(self, extras: Extras, batched: Extras) -> Extras:
    fields = {}
    for name, x, bx in zip(Extras._fields, extras, batched):
      if x is not None:
        fields[name] = self._pairwise(x, bx) if name in ("bias", "mask") else self(x, bx)
    return Extras(**fields)

  def unfold(self, x):
    return x.reshape((self.size, x.shape[0] // self.size) + x.shape[1:])

  def unfold_bias(self, dbias, bias, batched: bool):
    dbias = self.unfold(dbias)  # [V, B, ...]
    bias_b = bias.shape[1] if batched else bias.shape[0]
    return dbias.sum(1, keepdims=True) if bias_b == 1 and self.b != 1 else dbias


def _explicit_mesh(*xs):
  """The mesh of Explicit axes (jax.make_mesh's default) the arrays are typed with, if any.

  With Explicit axes shardings are part of the types: the implementation, which
  custom_partitioning traces on global shapes, would have to type-check every one of its
  ops on sharded operands (a sequence-sharded q.k^T is rejected). So the call runs under
  `auto_axes` with the result shardings given up front, and an unsupported split raises a
  plain ValueError while tracing instead of from inside compilation."""
  for x in xs:
    sharding = getattr(jax.typeof(x), "sharding", None)
    if isinstance(sharding, NamedSharding) and any(
        t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
      return sharding.mesh
  return None


# -- the partitioned ops --------------------------------------------------------------------
def _signature(extras: Extras):
  """Static description of the present extras (name, shape), for the sharding rule."""
  return tuple((name, tuple(x.shape)) for name, x in zip(Extras._fields, extras)
               if x is not None)


def _fwd_impl(q, k, v, extras, cfg, impl, sig):
  del sig
  return impl.fwd(q, k, v, extras, cfg)


def _bwd_impl(q, k, v, extras, out, lse, dout, dlse, cfg, impl, sig):
  del sig
  return impl.bwd(q, k, v, extras, out, lse, dout, dlse, cfg)


# -- Shardy rules -----------------------------------------------------------------------------
# Factors: b batch, t query length, s key length, n query heads, k key/value heads,
# h head dim of q/k, d head dim of v. N and K are separate factors (not n = k*g): a
# compound factor lets Shardy split one mesh axis between k and g when K does not divide
# it, a layout no NamedSharding can express; `_Plan` checks the head split instead.
_Q, _K, _V, _O, _LSE = "b t n h", "b s k h", "b s k d", "b t n d", "b n t"


def _extra_factors(name: str, shape) -> str:
  if name in ("bias", "mask"):  # broadcast (size-1) dims get factors of their own
    return " ".join(f if size != 1 else f"{name}_{f}1"
                    for f, size in zip(("b", "n", "t", "s"), shape))
  return {"q_seqlen": "b", "kv_seqlen": "b", "q_segment_ids": "b t",
          "kv_segment_ids": "b s"}[name]


def _rule(operands, results) -> tuple[str, dict]:
  return (", ".join(operands) + " -> " + ", ".join(results),
          {"need_replication_factors": ("h", "d")})


def _fwd_rule(cfg, impl, sig, mesh, operand_types, result_types):
  del cfg, impl, mesh, operand_types, result_types
  extras = [_extra_factors(name, shape) for name, shape in sig]
  return _rule([_Q, _K, _V, *extras], [_O, _LSE])


def _bwd_rule(cfg, impl, sig, mesh, operand_types, result_types):
  del cfg, impl, mesh, result_types
  extras = [_extra_factors(name, shape) for name, shape in sig]
  dlse = [_LSE] if len(operand_types) == 7 + len(extras) else []
  dbias = [_extra_factors(name, shape) for name, shape in sig if name == "bias"]
  return _rule([_Q, _K, _V, *extras, _O, _LSE, _O, *dlse], [_Q, _K, _V, *dbias])


# -- partitioning ---------------------------------------------------------------------------
def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _entry(axes: tuple[str, ...]):
  return None if not axes else axes[0] if len(axes) == 1 else axes


class _Plan:
  """How one call is split, decided from q's sharding (the authority: k, v and the
  extras are resharded to match it if they differ)."""

  def __init__(self, mesh, q, k, extras, cfg: AttnConfig):
    sharding = q.sharding
    if not isinstance(sharding, NamedSharding):
      raise ValueError("jax_flash.attention under jit needs NamedSharding inputs (arrays "
                       f"placed on a jax.sharding.Mesh), got {sharding!r}")
    self.mesh = mesh if not mesh.empty else sharding.mesh
    spec = tuple(sharding.spec) + (None,) * (4 - len(sharding.spec))
    self.batch, self.seq, self.heads = (_axes(e) for e in spec[:3])
    size = lambda axes: math.prod(self.mesh.shape[a] for a in axes)
    describe = lambda axes: (f"mesh axes {axes} of sizes "
                             f"{tuple(self.mesh.shape[a] for a in axes)}")
    b, t, n, _ = q.shape
    s, n_kv = k.shape[1], k.shape[2]
    shards = size(self.heads)
    if n % shards or n_kv % shards:
      raise ValueError(
          f"jax_flash.attention: query heads N={n} and key/value heads K={n_kv} are sharded "
          f"over {describe(self.heads)}; both head counts must be divisible by {shards} "
          "so that every group of query heads stays with its key/value head")
    if b % size(self.batch):
      raise ValueError(f"jax_flash.attention: batch B={b} is sharded over "
                       f"{describe(self.batch)}, which does not divide it")
    self.ring_size = size(self.seq)
    if self.ring_size == 1:
      self.seq = ()
      return
    where = (f"jax_flash.attention: the query sequence axis is sharded over "
             f"{describe(self.seq)}, which runs ring attention, but ")
    if t % self.ring_size or s % self.ring_size:
      raise ValueError(where + f"query length {t} and key length {s} must both be "
                       f"divisible by {self.ring_size}")
    reason = ring.unsupported_reason(t // self.ring_size, s // self.ring_size, extras, cfg)
    if reason is not None:
      raise ValueError(where + reason)

  def sharding(self, *entries) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(*(_entry(e) for e in entries)))

  @property
  def rows(self):  # q, k, v, out and their cotangents: [B, T|S, N|K, H]
    return self.sharding(self.batch, self.seq, self.heads, ())

  @property
  def lse(self):  # [B, N, T]
    return self.sharding(self.batch, self.heads, self.seq)

  def extras(self, extras: Extras) -> Extras:
    def one(name, x):
      if x is None:
        return None
      if name in ("bias", "mask"):
        bx, nx = x.shape[:2]
        return self.sharding(self.batch if bx != 1 else (), self.heads if nx != 1 else (),
                             (), ())
      if name.endswith("seqlen"):
        return self.sharding(self.batch)
      return self.sharding(self.batch, self.seq)  # segment ids

    return Extras(*(one(name, x) for name, x in zip(Extras._fields, extras)))

  def bias_reduction_axes(self, bias) -> tuple[str, ...]:
    """Mesh axes over which a broadcast bias's gradient is partial on each device."""
    return ((self.batch if bias.shape[0] == 1 else ())
            + (self.heads if bias.shape[1] == 1 else ()))


def _partition_fwd(cfg, impl, sig, mesh, arg_shapes, result_shape):
  del sig, result_shape
  q, k, v, extras = arg_shapes
  plan = _Plan(mesh, q, k, extras, cfg)

  def lower(q, k, v, extras):
    if plan.seq:
      return ring.ring_fwd(impl, q, k, v, extras, cfg, axis_name=plan.seq,
                           axis_size=plan.ring_size)
    return impl.fwd(q, k, v, extras, cfg)

  arg_shardings = (plan.rows, plan.rows, plan.rows, plan.extras(extras))
  return plan.mesh, lower, (plan.rows, plan.lse), arg_shardings


def _partition_bwd(cfg, impl, sig, mesh, arg_shapes, result_shape):
  del sig, result_shape
  q, k, v, extras, out, lse, dout, dlse = arg_shapes
  plan = _Plan(mesh, q, k, extras, cfg)
  reduce_axes = () if extras.bias is None else plan.bias_reduction_axes(extras.bias)

  def lower(q, k, v, extras, out, lse, dout, dlse):
    if plan.seq:
      return ring.ring_bwd(impl, q, k, v, extras, out, lse, dout, dlse, cfg,
                           axis_name=plan.seq, axis_size=plan.ring_size)
    dq, dk, dv, dbias = impl.bwd(q, k, v, extras, out, lse, dout, dlse, cfg)
    if reduce_axes:  # each device saw only its own rows/heads of a broadcast bias
      dbias = lax.psum(dbias, reduce_axes)
    return dq, dk, dv, dbias

  ex = plan.extras(extras)
  arg_shardings = (plan.rows, plan.rows, plan.rows, ex, plan.rows, plan.lse, plan.rows,
                   None if dlse is None else plan.lse)
  results = (plan.rows, plan.rows, plan.rows, ex.bias)
  return plan.mesh, lower, results, arg_shardings


def _infer_fwd(cfg, impl, sig, mesh, arg_shapes, result_shape):
  del sig, result_shape
  plan = _Plan(mesh, arg_shapes[0], arg_shapes[1], arg_shapes[3], cfg)
  return plan.rows, plan.lse


def _infer_bwd(cfg, impl, sig, mesh, arg_shapes, result_shape):
  del sig, result_shape
  plan = _Plan(mesh, arg_shapes[0], arg_shapes[1], arg_shapes[3], cfg)
  return plan.rows, plan.rows, plan.rows, plan.extras(arg_shapes[3]).bias


_fwd_op = custom_partitioning(_fwd_impl, static_argnums=(4, 5, 6))
_fwd_op.def_partition(partition=_partition_fwd, infer_sharding_from_operands=_infer_fwd,
                      sharding_rule=_fwd_rule)
_bwd_op = custom_partitioning(_bwd_impl, static_argnums=(8, 9, 10))
_bwd_op.def_partition(partition=_partition_bwd, infer_sharding_from_operands=_infer_bwd,
                      sharding_rule=_bwd_rule)
