"""The "xla" implementation: FlashAttention's algorithm in pure JAX.

This is the readable specification the CUDA kernels are checked against, the default
on CPU/TPU and the fallback everywhere. Exactly the kernels' structure:

  forward:  for each query block, loop over key blocks keeping a running row max `m`,
            row sum `l` and output accumulator (online softmax); only the output and the
            row log-sum-exp `lse` leave the loop.  O(T + S) memory, never T x S.
  backward: for each key block, loop over query blocks recomputing P = exp(s - lse)
            from (q, k, lse); accumulate dK, dV for the key block and dQ in float32.

Dimension legend: B batch, T query length, S key length, N query heads, K key/value
heads, G = N // K query heads per K/V head, H head dim of q/k, Hv head dim of v.
Internally queries are grouped as [B, K, G, T, H] so K/V are never repeated.

Logits, in order: s = scale * q.k;  s = softcap * tanh(s / softcap);  s += bias;
then every mask (window/causal, lengths, segments, dense mask) sets s = -inf.
Rows that see no key get output 0 and lse = -inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from . import _compat
from ._config import UNBOUNDED, AttnConfig, Extras

# 512 x 512 float32 score tiles: large enough that the loops cost little on CPU,
# small enough that T = S = 16384 fwd+bwd needs ~20 MiB of temporaries.
BLOCK_Q = 512
BLOCK_K = 512
_HIGHEST = lax.Precision.HIGHEST


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pad_axis(x, axis: int, size: int):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


class _Blocking:
  """Block sizes and padded lengths for one call."""

  def __init__(self, t: int, s: int):
    self.t, self.s = t, s
    self.bq, self.bk = min(BLOCK_Q, t), min(BLOCK_K, s)
    self.tp, self.sp = _round_up(t, self.bq), _round_up(s, self.bk)
    self.nq, self.nk = self.tp // self.bq, self.sp // self.bk


def _group_pairwise(x, n_kv: int, tp: int, sp: int):
  """[Bx, Nx, Tx, Sx] bias/mask (each dim 1 or full) -> [Bx, Kx, Gx, Tp|1, Sp|1]."""
  bx, nx, tx, sx = x.shape
  x = x.reshape(bx, n_kv, nx // n_kv, tx, sx) if nx != 1 else x.reshape(bx, 1, 1, tx, sx)
  if tx != 1:
    x = _pad_axis(x, 3, tp)
  if sx != 1:
    x = _pad_axis(x, 4, sp)
  return x


def _pairwise_block(x, i, j, bq: int, bk: int):
  """The (i, j) tile of a grouped bias/mask; broadcast dims stay 1."""
  sizes = list(x.shape)
  starts = [0, 0, 0, 0, 0]
  if x.shape[3] != 1:
    starts[3], sizes[3] = i * bq, bq
  if x.shape[4] != 1:
    starts[4], sizes[4] = j * bk, bk
  return lax.dynamic_slice(x, starts, sizes)


class _Problem:
  """Everything a (query block, key block) tile needs, prepared once per call."""

  def __init__(self, q, k, v, extras: Extras, cfg: AttnConfig):
    b, t, n, h = q.shape
    _, s, n_kv, hv = v.shape
    self.shape = (b, t, s, n, n_kv, h, hv)
    self.cfg = cfg
    self.blk = blk = _Blocking(t, s)
    g = n // n_kv
    # [B, K, G, Tp, H] queries; [B, K, Sp, H] keys and values.
    self.q = _pad_axis(q.reshape(b, t, n_kv, g, h).transpose(0, 2, 3, 1, 4), 3, blk.tp)
    self.k = _pad_axis(k.transpose(0, 2, 1, 3), 2, blk.sp)
    self.v = _pad_axis(v.transpose(0, 2, 1, 3), 2, blk.sp)
    self.bias = None if extras.bias is None else _group_pairwise(
        extras.bias.astype(jnp.float32), n_kv, blk.tp, blk.sp)
    self.mask = None if extras.mask is None else _group_pairwise(
        extras.mask, n_kv, blk.tp, blk.sp)
    self.extras = extras
    if extras.q_segment_ids is not None:
      self.q_seg = _pad_axis(extras.q_segment_ids, 1, blk.tp)
      self.kv_seg = _pad_axis(extras.kv_segment_ids, 1, blk.sp)

  # -- visibility ------------------------------------------------------------------
  def block_visible(self, i, j):
    """False only where the window/causal band provably excludes the whole tile."""
    cfg, blk = self.cfg, self.blk
    q_lo, q_hi = i * blk.bq, jnp.minimum((i + 1) * blk.bq, blk.t) - 1
    k_lo, k_hi = j * blk.bk, jnp.minimum((j + 1) * blk.bk, blk.s) - 1
    ok = jnp.asarray(True)
    if cfg.window_right != UNBOUNDED:
      ok = ok & (k_lo <= q_hi + cfg.window_right)
    if cfg.window_left != UNBOUNDED:
      ok = ok & (k_hi >= q_lo - cfg.window_left)
    return ok

  def tile_mask(self, i, j):
    """Boolean [B|1, K|1, G|1, bq, bk] mask of visible (query, key) pairs."""
    cfg, blk, ex = self.cfg, self.blk, self.extras
    qpos = i * blk.bq + jnp.arange(blk.bq)
    kpos = j * blk.bk + jnp.arange(blk.bk)
    vis = jnp.broadcast_to(kpos[None, :] < blk.s, (blk.bq, blk.bk))
    if cfg.window_right != UNBOUNDED:
      vis = vis & (kpos[None, :] <= qpos[:, None] + cfg.window_right)
    if cfg.window_left != UNBOUNDED:
      vis = vis & (kpos[None, :] >= qpos[:, None] - cfg.window_left)
    vis = vis[None, None, None]
    if ex.kv_seqlen is not None:
      vis = vis & (kpos[None, :] < ex.kv_seqlen[:, None])[:, None, None, None, :]
    if ex.q_seqlen is not None:
      vis = vis & (qpos[None, :] < ex.q_seqlen[:, None])[:, None, None, :, None]
    if ex.q_segment_ids is not None:
      qs = lax.dynamic_slice_in_dim(self.q_seg, i * blk.bq, blk.bq, axis=1)
      ks = lax.dynamic_slice_in_dim(self.kv_seg, j * blk.bk, blk.bk, axis=1)
      vis = vis & (qs[:, :, None] == ks[:, None, :])[:, None, None]
    if self.mask is not None:
      vis = vis & _pairwise_block(self.mask, i, j, blk.bq, blk.bk)
    return vis

  # -- logits ------------------------------------------------------------------------
  def logits(self, qb, kb, i, j):
    """Masked logits of one tile, float32 [B, K, G, bq, bk]; also the pre-mask softcap
    tanh (for its derivative) and the visibility mask."""
    cfg = self.cfg
    s = jnp.einsum("bkgqh,bksh->bkgqs", qb, kb, precision=_HIGHEST,
                   preferred_element_type=jnp.float32) * cfg.scale
    tanh = None
    if cfg.softcap is not None:
      tanh = jnp.tanh(s / cfg.softcap)
      s = cfg.softcap * tanh
    if self.bias is not None:
      s = s + _pairwise_block(self.bias, i, j, self.blk.bq, self.blk.bk)
    vis = self.tile_mask(i, j)
    return jnp.where(vis, s, -jnp.inf), tanh, vis

  def q_block(self, x, i):
    return lax.dynamic_slice_in_dim(x, i * self.blk.bq, self.blk.bq, axis=3)

  def kv_block(self, x, j):
    return lax.dynamic_slice_in_dim(x, j * self.blk.bk, self.blk.bk, axis=2)


def _pv_dtype(v):
  # Like the kernels: P is rounded to the 16-bit input type before P @ V.
  return v.dtype if jnp.dtype(v.dtype).itemsize == 2 else jnp.float32


def fwd(q, k, v, extras: Extras, cfg: AttnConfig):
  """Attention forward. q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv] ->
  (out [B,T,N,Hv] in q.dtype, lse [B,N,T] float32)."""
  pb = _Problem(q, k, v, extras, cfg)
  b, t, s, n, n_kv, h, hv = pb.shape
  blk, g = pb.blk, n // n_kv

  def one_q_block(i):
    qb = pb.q_block(pb.q, i)
    init = (jnp.full((b, n_kv, g, blk.bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, n_kv, g, blk.bq), jnp.float32),
            jnp.zeros((b, n_kv, g, blk.bq, hv), jnp.float32))
    init = _compat.match_varying(init, q, k, v, extras)  # inside shard_map: see _compat

    def step(carry, j):
      def update(carry):
        m, l, acc = carry
        sc, _, _ = pb.logits(qb, pb.kv_block(pb.k, j), i, j)
        m_new = jnp.maximum(m, sc.max(-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # all masked so far: no NaN
        p = jnp.exp(sc - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)
        vb = pb.kv_block(pb.v, j)
        pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(_pv_dtype(vb)), vb,
                        precision=_HIGHEST, preferred_element_type=jnp.float32)
        return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

      return lax.cond(pb.block_visible(i, j), update, lambda c: c, carry), None

    (m, l, acc), _ = lax.scan(step, init, jnp.arange(blk.nk))
    empty = l == 0.0
    out = jnp.where(empty[..., None], 0.0, acc / jnp.where(empty, 1.0, l)[..., None])
    lse = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    return out.astype(q.dtype), lse

  out, lse = lax.map(one_q_block, jnp.arange(blk.nq))  # [nq, B, K, G, bq, ...]
  out = jnp.moveaxis(out, 0, 3).reshape(b, n_kv, g, blk.tp, hv)[:, :, :, :t]
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, n, blk.tp)[:, :, :t]
  out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, hv)
  return out, lse


def _reduce_to(x, shape):
  """Sum a broadcast tile back to a (broadcast-dim = 1) bias tile shape."""
  axes = tuple(a for a, (xs, ts) in enumerate(zip(x.shape, shape)) if ts == 1 and xs != 1)
  return x.sum(axes, keepdims=True) if axes else x


def softmax_delta(out, dout, dlse):
  """delta [B,N,T] float32 for dS = P * (dP - delta), shared by every backward.

  delta_i = sum_j P_ij dP_ij = rowsum(dO * O); an lse cotangent adds dlse_i * P_ij to dS_ij,
  the same as subtracting dlse from delta. Elementwise product and sum: exact float32 on
  every backend (a dot could lower to TF32 on GPUs).
  """
  delta = jnp.swapaxes(jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1), -1, -2)
  return delta if dlse is None else delta - dlse.astype(jnp.float32)


def bwd(q, k, v, extras: Extras, out, lse, dout, dlse, cfg: AttnConfig):
  """Attention backward from the forward's (out, lse) and cotangents (dout, dlse).

  Returns (dq, dk, dv, dbias); dbias is None when there is no bias. dlse may be None.
  """
  pb = _Problem(q, k, v, extras, cfg)
  b, t, s, n, n_kv, h, hv = pb.shape
  blk, g = pb.blk, n // n_kv

  delta = softmax_delta(out, dout, dlse)
  grouped = lambda x: _pad_axis(x.reshape(b, n_kv, g, t), 3, blk.tp)
  lse_g, delta_g = grouped(lse), grouped(delta)
  do = _pad_axis(dout.reshape(b, t, n_kv, g, hv).transpose(0, 2, 3, 1, 4), 3, blk.tp)
  inputs = (q, k, v, extras, out, lse, dout, dlse)  # accumulators vary like these

  def one_kv_block(carry, j):
    dq_acc, dbias_acc = carry
    kb, vb = pb.kv_block(pb.k, j), pb.kv_block(pb.v, j)

    def step(inner, i):
      def update(inner):
        dk, dv, dq_acc, dbias_acc = inner
        qb, dob = pb.q_block(pb.q, i), pb.q_block(do, i)
        lse_b = lax.dynamic_slice_in_dim(lse_g, i * blk.bq, blk.bq, axis=3)
        delta_b = lax.dynamic_slice_in_dim(delta_g, i * blk.bq, blk.bq, axis=3)
        sc, tanh, vis = pb.logits(qb, kb, i, j)
        lse_safe = jnp.where(lse_b == -jnp.inf, 0.0, lse_b)
        p = jnp.where(vis, jnp.exp(sc - lse_safe[..., None]), 0.0)
        dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p.astype(_pv_dtype(vb)), dob,
                             precision=_HIGHEST, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkgqh,bksh->bkgqs", dob, vb, precision=_HIGHEST,
                        preferred_element_type=jnp.float32)
        ds = p * (dp - delta_b[..., None])  # d(logit after softcap and bias)
        if dbias_acc is not None:
          tile = _pairwise_block(dbias_acc, i, j, blk.bq, blk.bk)
          tile = tile + _reduce_to(ds, tile.shape)
          starts = [0, 0, 0, i * blk.bq if tile.shape[3] != 1 else 0,
                    j * blk.bk if tile.shape[4] != 1 else 0]
          dbias_acc = lax.dynamic_update_slice(dbias_acc, tile, starts)
        if tanh is not None:
          ds = ds * (1.0 - tanh * tanh)
        ds = ds * cfg.scale
        dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds, qb.astype(jnp.float32),
                             precision=_HIGHEST)
        dq_tile = jnp.einsum("bkgqs,bksh->bkgqh", ds, kb.astype(jnp.float32),
                             precision=_HIGHEST)
        dq_acc = lax.dynamic_update_slice_in_dim(
            dq_acc, pb.q_block(dq_acc, i) + dq_tile, i * blk.bq, axis=3)
        return dk, dv, dq_acc, dbias_acc

      return lax.cond(pb.block_visible(i, j), update, lambda c: c, inner), None

    init = _compat.match_varying((jnp.zeros((b, n_kv, blk.bk, h), jnp.float32),
                                  jnp.zeros((b, n_kv, blk.bk, hv), jnp.float32)), *inputs)
    init = init + (dq_acc, dbias_acc)
    (dk, dv, dq_acc, dbias_acc), _ = lax.scan(step, init, jnp.arange(blk.nq))
    return (dq_acc, dbias_acc), (dk, dv)

  dq0 = jnp.zeros((b, n_kv, g, blk.tp, h), jnp.float32)
  dbias0 = None if pb.bias is None else jnp.zeros(pb.bias.shape, jnp.float32)
  dq0, dbias0 = _compat.match_varying((dq0, dbias0), *inputs)
  (dq, dbias), (dk, dv) = lax.scan(one_kv_block, (dq0, dbias0), jnp.arange(blk.nk))
  dq = dq[:, :, :, :t].transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q.dtype)
  kv_out = lambda x, d, dtype: (jnp.moveaxis(x, 0, 2).reshape(b, n_kv, blk.sp, d)[:, :, :s]
                                .transpose(0, 2, 1, 3).astype(dtype))
  dk, dv = kv_out(dk, h, k.dtype), kv_out(dv, hv, v.dtype)
  if dbias is not None:
    bias = extras.bias
    bx, nx, tx, sx = bias.shape
    dbias = dbias[:, :, :, :tx, :sx].reshape(bx, nx, tx, sx).astype(bias.dtype)
  return dq, dk, dv, dbias
