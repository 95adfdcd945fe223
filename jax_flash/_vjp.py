"""The differentiable core: one custom_vjp over either implementation.

Forward saves (q, k, v, extras, out, lse); backward recomputes the scores tile by tile
from them (FlashAttention), so nothing of size T x S is ever stored. Both the "xla" and
"cuda" implementations provide the same two functions:

  fwd(q, k, v, extras, cfg)                          -> (out, lse)
  bwd(q, k, v, extras, out, lse, dout, dlse, cfg)    -> (dq, dk, dv, dbias)

and `_partition` wraps them so they run per shard under jit/shard_map/pmap.
"""

from __future__ import annotations

import functools

import jax

from . import _partition
from ._config import AttnConfig, Extras


def _impl(name: str):
  if name == "cuda":
    from . import _cuda
    return _cuda
  from . import _xla
  return _xla


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attention_core(q, k, v, extras: Extras, cfg: AttnConfig, impl: str):
  """(out [B,T,N,Hv], lse [B,N,T] float32) for canonical 4-D inputs."""
  return _partition.fwd(_impl(impl), q, k, v, extras, cfg)


def _core_fwd(q, k, v, extras, cfg, impl):
  out, lse = _partition.fwd(_impl(impl), q, k, v, extras, cfg)
  return (out, lse), (q, k, v, extras, out, lse)


def _core_bwd(cfg, impl, residuals, cotangents):
  q, k, v, extras, out, lse = residuals
  dout, dlse = cotangents
  dq, dk, dv, dbias = _partition.bwd(_impl(impl), q, k, v, extras, out, lse, dout,
                                     dlse, cfg)
  # Integer and boolean extras (mask, lengths, segment ids) have no cotangent.
  d_extras = Extras(bias=dbias)
  return dq, dk, dv, d_extras


attention_core.defvjp(_core_fwd, _core_bwd)
