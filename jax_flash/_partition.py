"""Partitioning layer between the custom_vjp core and the per-shard implementations.

`fwd` and `bwd` are the only entry points `_vjp` uses; they receive the implementation
module (`_xla` or `_cuda`) and call its per-shard `fwd`/`bwd`.
"""

from __future__ import annotations


def fwd(impl, q, k, v, extras, cfg):
  return impl.fwd(q, k, v, extras, cfg)


def bwd(impl, q, k, v, extras, out, lse, dout, dlse, cfg):
  return impl.bwd(q, k, v, extras, out, lse, dout, dlse, cfg)
