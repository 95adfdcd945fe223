"""Ring attention: context parallelism over a mesh axis whose devices each hold one
slice of the sequence.

Dimension legend: B batch, T / S query / key length held by ONE device (a 1/P slice of
the global sequence), N query heads, K key/value heads, H head dim of q/k, Hv of v,
P devices on the ring (the size of `axis_name`, which may be a tuple of mesh axes).

Forward. Each device keeps its queries; the key/value blocks travel around the ring with
`ppermute`, so at step r device d holds the block of device (d - r) mod P. Every step
calls the per-shard implementation's `fwd`, which returns (out_r, lse_r), and partial
results merge exactly:  lse = log(sum_r exp(lse_r)),  out = sum_r exp(lse_r - lse) out_r.
The ppermute of the next block is issued before the current block is computed, so the
transfer runs behind the compute. Nothing ever gathers the full K/V.

Backward. The same ring again, with the global (out, lse) from the forward: each step's
`bwd` gives exact partial dQ, dK, dV for one block (P = exp(s - lse) needs only the row's
final lse). dQ accumulates locally; dK/dV accumulators (float32, so for 16-bit inputs they
double the bytes moved per step) travel with their K/V block and one last shift returns
each to the device that owns the block.

Causal load balance (zig-zag). Contiguous slices make causal work lopsided (device P-1
attends to P blocks, device 0 to one) and every ring step waits for the slowest device.
So the sequence is cut into 2P chunks and device d holds chunks d and 2P-1-d. Then every
step r > 0 costs each device exactly half a block of unmasked work:
  source j < d: all our queries against the source's first chunk (its second chunk lies
                after both of ours, so it is invisible);
  source j > d: our second chunk against both source chunks (our first chunk precedes
                both of them, so it sees nothing).
Step 0 is plain causal attention on the local pair, because the local order of the two
chunks is their global order. No position offsets are needed anywhere.

Layouts. layout="contiguous" (the default, and what `jax_flash.attention` uses when a
jit-sharded sequence axis triggers the ring): shards are contiguous slices in the users'
order; for causal attention they are permuted to zig-zag inside (two ppermutes of half a
shard per tensor) and outputs are permuted back, so users never see it. The cost is one
extra interconnect pass over q, k, v and out (plus dout, dq, dk, dv in the backward):
O(T) traffic against O(T * T * P) attention work per device. layout="zigzag": the shards
already hold chunks (d, 2P-1-d), e.g. because the data pipeline applied `to_zigzag` to
the global sequence (tokens, labels, positions alike); then nothing is permuted.

Supported: causal (T == S) and non-causal (any T, S), GQA/MQA, softcap, segment ids
(they travel with their K/V block), sequence lengths (turned into segment ids). Rejected
with a ValueError: bias and mask (a dense [T, S] term defeats the point of splitting the
sequence), local windows, and lengths together with segment ids.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _validate
from ._config import UNBOUNDED, AttnConfig, Extras

LAYOUTS = ("contiguous", "zigzag")

__all__ = ["ring_attention", "to_zigzag", "from_zigzag", "zigzag_order"]


# -- zig-zag layout of the global sequence -------------------------------------------------
def zigzag_order(seq_len: int, num_shards: int) -> np.ndarray:
  """Indices `order` such that `x[order]` (along the sequence) is the zig-zag layout: its
  contiguous shard d holds chunks d and 2P-1-d of the 2P equal chunks of the sequence."""
  if seq_len % (2 * num_shards):
    raise ValueError(f"the zig-zag layout needs the sequence length ({seq_len}) to be a "
                     f"multiple of 2 * num_shards = {2 * num_shards}")
  c = seq_len // (2 * num_shards)
  chunks = [i for d in range(num_shards) for i in (d, 2 * num_shards - 1 - d)]
  return np.concatenate([np.arange(i * c, (i + 1) * c) for i in chunks])


def to_zigzag(x, num_shards: int, axis: int = 1):
  """Permute the global sequence axis of x into the zig-zag layout (see module doc)."""
  return jnp.take(x, zigzag_order(x.shape[axis], num_shards), axis=axis)


def from_zigzag(x, num_shards: int, axis: int = 1):
  """Inverse of `to_zigzag`."""
  return jnp.take(x, np.argsort(zigzag_order(x.shape[axis], num_shards)), axis=axis)


# -- collectives on local shards ---------------------------------------------------------
def _shift(tree, axis_name, p: int):
  """Send every array of `tree` to the next device on the ring (d -> d + 1)."""
  perm = [(i, (i + 1) % p) for i in range(p)]
  return jax.tree.map(lambda x: lax.ppermute(x, axis_name, perm), tree)


def _zigzag_perms(p: int):
  """ppermute pairs moving a contiguous shard's first / second half (global chunks 2s and
  2s+1 of device s) to the device that holds that chunk in the zig-zag layout."""
  owner = lambda c: c if c < p else 2 * p - 1 - c
  return ([(s, owner(2 * s)) for s in range(p)], [(s, owner(2 * s + 1)) for s in range(p)])


def _local_to_zigzag(x, axis: int, axis_name, p: int):
  first, second = jnp.split(x, 2, axis=axis)
  to_first, to_second = _zigzag_perms(p)
  even_chunk = lax.ppermute(first, axis_name, to_first)
  odd_chunk = lax.ppermute(second, axis_name, to_second)
  # An even device receives its low chunk (d, even) from the first halves, an odd device
  # from the second halves.
  even = lax.axis_index(axis_name) % 2 == 0
  return jnp.where(even, jnp.concatenate([even_chunk, odd_chunk], axis),
                   jnp.concatenate([odd_chunk, even_chunk], axis))


def _local_from_zigzag(x, axis: int, axis_name, p: int):
  low, high = jnp.split(x, 2, axis=axis)
  even = lax.axis_index(axis_name) % 2 == 0
  even_chunk, odd_chunk = jnp.where(even, low, high), jnp.where(even, high, low)
  inverse = lambda pairs: [(dst, src) for src, dst in pairs]
  to_first, to_second = _zigzag_perms(p)
  first = lax.ppermute(even_chunk, axis_name, inverse(to_first))
  second = lax.ppermute(odd_chunk, axis_name, inverse(to_second))
  return jnp.concatenate([first, second], axis)


def _global_positions(axis_name, p: int, n: int, layout: str):
  """Global sequence positions [n] of this device's n local rows."""
  d = lax.axis_index(axis_name)
  if layout == "zigzag":
    c = n // 2
    return jnp.concatenate([d * c + jnp.arange(c), (2 * p - 1 - d) * c + jnp.arange(c)])
  return d * n + jnp.arange(n)


# -- what the ring supports ----------------------------------------------------------------
def unsupported_reason(t: int, s: int, extras: Extras, cfg: AttnConfig) -> str | None:
  """None if the ring can run local shards of query length t and key length s, else why."""
  if extras.bias is not None or extras.mask is not None:
    return ("bias and mask are not supported with a sharded sequence axis (a dense [T, S] "
            "term defeats context parallelism); express the pattern with is_causal, "
            "segment ids or sequence lengths")
  if cfg.has_window and not cfg.is_causal:
    return "local_window_size is not supported with a sharded sequence axis"
  lengths = extras.q_seqlen is not None or extras.kv_seqlen is not None
  if lengths and extras.q_segment_ids is not None:
    return ("sequence lengths together with segment ids are not supported with a sharded "
            "sequence axis; mark padding as its own segment instead")
  if cfg.is_causal and (t != s or t % 2):
    return ("causal ring attention needs equal query and key lengths, each shard of even "
            f"length (zig-zag halves), got local query length {t} and key length {s}")
  return None


def _lengths_as_segments(extras: Extras, b: int, t: int, s: int, axis_name, p, layout):
  """Padding lengths are global positions; the ring moves blocks and (zig-zag) splits a
  shard into two ranges, so turn them into segment ids once: valid rows are segment 0,
  padded queries 1 and padded keys 2, which never match each other."""
  if extras.q_seqlen is None and extras.kv_seqlen is None:
    return extras

  def seg(lengths, n, pad_id):
    if lengths is None:
      return jnp.zeros((b, n), jnp.int32)
    pos = _global_positions(axis_name, p, n, layout)
    return jnp.where(pos[None, :] < lengths[:, None], 0, pad_id).astype(jnp.int32)

  return extras._replace(q_seqlen=None, kv_seqlen=None,
                         q_segment_ids=seg(extras.q_seqlen, t, 1),
                         kv_segment_ids=seg(extras.kv_seqlen, s, 2))


# -- the ring --------------------------------------------------------------------------------
class _Ring:
  """Shared setup of the forward and backward rings on one device's shards."""

  def __init__(self, extras, cfg, axis_name, axis_size, layout, b, t, s):
    if layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    self.axis_name, self.p = axis_name, axis_size
    self.zigzag = cfg.is_causal and axis_size > 1
    self.permute = self.zigzag and layout == "contiguous"
    self.extras = _lengths_as_segments(extras, b, t, s, axis_name, axis_size, layout)
    # Off-diagonal blocks are either invisible or fully visible: no mask at all.
    self.full = dataclasses.replace(cfg, window_left=UNBOUNDED, window_right=UNBOUNDED)
    self.device = lax.axis_index(axis_name)

  def to_local(self, x, axis=1):
    if x is None or not self.permute:
      return x
    return _local_to_zigzag(x, axis, self.axis_name, self.p)

  def from_local(self, x, axis=1):
    if not self.permute:
      return x
    return _local_from_zigzag(x, axis, self.axis_name, self.p)

  def local_extras(self):
    ex = self.extras
    return ex._replace(q_segment_ids=self.to_local(ex.q_segment_ids),
                       kv_segment_ids=self.to_local(ex.kv_segment_ids))

  def past(self, r: int):
    """At step r >= 1, whether the visiting block precedes ours (source j = d - r >= 0)."""
    return self.device >= r


def _half(x, which: int, axis: int = 1):
  return None if x is None else jnp.split(x, 2, axis=axis)[which]


def _with_segments(extras: Extras, q_seg, kv_seg) -> Extras:
  return extras._replace(q_segment_ids=q_seg, kv_segment_ids=kv_seg)


def _merge(out, lse, out_r, lse_r):
  """Combine two normalized partial attentions over disjoint key sets."""
  new = jnp.logaddexp(lse, lse_r)
  safe = jnp.where(jnp.isneginf(new), 0.0, new)  # rows with no key anywhere stay 0
  weight = lambda l: jnp.exp(l - safe).transpose(0, 2, 1)[..., None]  # [B,N,T] -> [B,T,N,1]
  return weight(lse) * out + weight(lse_r) * out_r.astype(jnp.float32), new


def ring_fwd(impl, q, k, v, extras: Extras, cfg: AttnConfig, *, axis_name, axis_size: int,
             layout: str = "contiguous"):
  """Per-device forward of ring attention on local shards (inside shard_map or a
  custom_partitioning lowering). Returns (out [B,T,N,Hv] in q.dtype, lse [B,N,T])."""
  ring = _Ring(extras, cfg, axis_name, axis_size, layout, q.shape[0], q.shape[1],
               k.shape[1])
  q, k, v = ring.to_local(q), ring.to_local(k), ring.to_local(v)
  extras = ring.local_extras()
  q_seg = extras.q_segment_ids

  def visit(r, blk):
    """Partial (out, lse) of all local queries against the block visiting at step r."""
    bk, bv, bseg = blk
    if not ring.zigzag:
      return impl.fwd(q, bk, bv, _with_segments(extras, q_seg, bseg), ring.full)

    def past(_):  # all queries x the source's first chunk
      ex = _with_segments(extras, q_seg, _half(bseg, 0))
      return impl.fwd(q, _half(bk, 0), _half(bv, 0), ex, ring.full)

    def future(_):  # our second chunk x both source chunks; the first sees nothing
      ex = _with_segments(extras, _half(q_seg, 1), bseg)
      o, l = impl.fwd(_half(q, 1), bk, bv, ex, ring.full)
      return (jnp.concatenate([jnp.zeros_like(o), o], 1),
              jnp.concatenate([jnp.full_like(l, -jnp.inf), l], 2))

    return lax.cond(ring.past(r), past, future, None)

  def body(carry, r):
    blk, out, lse = carry
    nxt = _shift(blk, axis_name, axis_size)  # in flight while this block is computed
    out, lse = _merge(out, lse, *visit(r, blk))
    return (nxt, out, lse), None

  blk = (k, v, extras.kv_segment_ids)
  if axis_size > 1:
    blk = _shift(blk, axis_name, axis_size)  # in flight during the local block
  out, lse = impl.fwd(q, k, v, extras, cfg)
  if axis_size > 1:  # (the last iteration's shift goes unused: one spare transfer)
    carry = (blk, out.astype(jnp.float32), lse)
    (_, out, lse), _ = lax.scan(body, carry, jnp.arange(1, axis_size))
  return ring.from_local(out.astype(q.dtype)), ring.from_local(lse, axis=2)


def ring_bwd(impl, q, k, v, extras: Extras, out, lse, dout, dlse, cfg: AttnConfig, *,
             axis_name, axis_size: int, layout: str = "contiguous"):
  """Per-device backward of ring attention. Returns (dq, dk, dv, None)."""
  ring = _Ring(extras, cfg, axis_name, axis_size, layout, q.shape[0], q.shape[1],
               k.shape[1])
  dtypes = (q.dtype, k.dtype, v.dtype)
  q, k, v, out, dout = (ring.to_local(x) for x in (q, k, v, out, dout))
  lse, dlse = ring.to_local(lse, 2), ring.to_local(dlse, 2)
  extras = ring.local_extras()
  q_seg = extras.q_segment_ids
  f32 = lambda *xs: tuple(x.astype(jnp.float32) for x in xs)

  def visit(r, blk):
    """Partial (dq, dk, dv) of the block visiting at step r, all float32."""
    bk, bv, bseg = blk
    if not ring.zigzag:
      ex = _with_segments(extras, q_seg, bseg)
      return f32(*impl.bwd(q, bk, bv, ex, out, lse, dout, dlse, ring.full)[:3])

    def past(_):
      ex = _with_segments(extras, q_seg, _half(bseg, 0))
      dq, dk, dv, _ = impl.bwd(q, _half(bk, 0), _half(bv, 0), ex, out, lse, dout, dlse,
                               ring.full)
      pad = lambda x: jnp.concatenate([x, jnp.zeros_like(x)], 1)
      return f32(dq, pad(dk), pad(dv))

    def future(_):
      ex = _with_segments(extras, _half(q_seg, 1), bseg)
      dq, dk, dv, _ = impl.bwd(_half(q, 1), bk, bv, ex, _half(out, 1), _half(lse, 1, 2),
                               _half(dout, 1), _half(dlse, 1, 2), ring.full)
      return f32(jnp.concatenate([jnp.zeros_like(dq), dq], 1), dk, dv)

    return lax.cond(ring.past(r), past, future, None)

  def body(carry, r):
    blk, dq, acc = carry
    nxt = _shift(blk, axis_name, axis_size)  # in flight while this block is computed
    dq_r, dk_r, dv_r = visit(r, blk)
    # This block's dK/dV accumulator arrives from the previous device meanwhile.
    acc = jax.tree.map(jnp.add, _shift(acc, axis_name, axis_size), (dk_r, dv_r))
    return (nxt, dq + dq_r, acc), None

  blk = (k, v, extras.kv_segment_ids)
  if axis_size > 1:
    blk = _shift(blk, axis_name, axis_size)  # in flight during the local block
  dq, dk, dv = f32(*impl.bwd(q, k, v, extras, out, lse, dout, dlse, cfg)[:3])
  acc = (dk, dv)
  if axis_size > 1:
    (_, dq, acc), _ = lax.scan(body, (blk, dq, acc), jnp.arange(1, axis_size))
    # After P steps device d holds the sums of block d + 1: send them home.
    acc = _shift(acc, axis_name, axis_size)
  dq, dk, dv = (ring.from_local(x).astype(dt) for x, dt in zip((dq, *acc), dtypes))
  return dq, dk, dv, None


# -- public function for use inside the user's own shard_map ------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _ring_core(q, k, v, extras, cfg, impl, axis_name, axis_size, layout):
  return ring_fwd(impl, q, k, v, extras, cfg, axis_name=axis_name, axis_size=axis_size,
                  layout=layout)


def _ring_core_fwd(q, k, v, extras, cfg, impl, axis_name, axis_size, layout):
  out, lse = _ring_core(q, k, v, extras, cfg, impl, axis_name, axis_size, layout)
  return (out, lse), (q, k, v, extras, out, lse)


def _ring_core_bwd(cfg, impl, axis_name, axis_size, layout, residuals, cotangents):
  q, k, v, extras, out, lse = residuals
  dout, dlse = cotangents
  dq, dk, dv, _ = ring_bwd(impl, q, k, v, extras, out, lse, dout, dlse, cfg,
                           axis_name=axis_name, axis_size=axis_size, layout=layout)
  return dq, dk, dv, Extras()


_ring_core.defvjp(_ring_core_fwd, _ring_core_bwd)


def ring_attention(query, key, value, *, axis_name, is_causal=False, scale=None,
                   softcap=None, query_seq_lengths=None, key_value_seq_lengths=None,
                   q_segment_ids=None, kv_segment_ids=None, return_lse=False,
                   layout="contiguous", implementation=None):
  """Ring attention on this device's sequence shard, inside `jax.shard_map`.

  query [B, T, N, H], key [B, S, K, H], value [B, S, K, Hv] are the LOCAL shards of a
  sequence split over the mesh axis (or tuple of axes) `axis_name`, in device order.
  Arguments mean what they mean in `jax_flash.attention`, with global semantics:
  segment ids are the local shards' ids, sequence lengths are global lengths [B].
  `layout`: "contiguous" (shard d holds rows [d*T, (d+1)*T)) or "zigzag" (the global
  sequence was permuted with `to_zigzag` before sharding; saves the internal
  permutation of causal attention). Differentiable; bias, mask and local windows are
  not supported here.

  Returns the local output shard [B, T, N, Hv] (and lse [B, N, T] when return_lse).
  """
  from . import _vjp, api  # here, not at import time: api -> _vjp -> _partition -> ring

  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  call = _validate.canonicalize(
      query, key, value, None, None, scale=scale, is_causal=is_causal,
      local_window_size=None, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, q_segment_ids=q_segment_ids,
      kv_segment_ids=kv_segment_ids, softcap=softcap, return_lse=return_lse,
      implementation=implementation)
  axis_size = lax.axis_size(axis_name)
  t, s = call.q.shape[1], call.k.shape[1]
  reason = unsupported_reason(t, s, call.extras, call.cfg)
  if reason is None and layout == "zigzag" and (t % 2 or s % 2):
    reason = f"layout='zigzag' needs even shard lengths, got query {t} and key {s}"
  if reason is not None:
    raise ValueError(f"ring_attention over axis {axis_name!r}: {reason}")
  impl = _vjp._impl(api._choose_implementation(implementation, call))
  axis = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else axis_name
  out, lse = _ring_core(call.q, call.k, call.v, call.extras, call.cfg, impl, axis,
                        axis_size, layout)
  return call.result(out, lse)
