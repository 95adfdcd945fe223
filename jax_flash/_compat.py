"""The one place that knows about differences between JAX versions (0.10 to 0.11 here).

`manual_axes` reads the context mesh of an enclosing shard_map/pmap.

Inside `jax.shard_map` (check_vma=True, the default) every value carries the set of
manual mesh axes along which it varies between devices, and the branches of `lax.cond` and
the carry of `lax.scan` must agree on it. A loop accumulator created with `jnp.zeros`
varies along nothing while the values added to it vary along the inputs' axes, so such
accumulators must be cast up front with `match_varying`. JAX 0.10 exposes the set as
`aval.manual_axis_type.varying` and casts with `lax.pcast(..., to="varying")`; earlier
releases had `aval.vma` and `lax.pvary`.
"""

from __future__ import annotations

import jax
from jax import lax


def manual_axes() -> tuple[str, ...]:
  """Mesh axes that are manual where we are being traced: those of an enclosing
  `shard_map` (all of them, or a subset with `axis_names=`) or `pmap`."""
  mesh = jax.sharding.get_abstract_mesh()
  return tuple(getattr(mesh, "manual_axes", ()))


def varying_axes(*xs) -> frozenset[str]:
  """Union of the manual mesh axes along which the arrays in `xs` vary (None skipped)."""
  axes = set()
  for x in jax.tree.leaves(xs):
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    axes |= set(manual.varying) if manual is not None else set(getattr(aval, "vma", ()))
  return frozenset(axes)


def match_varying(tree, *like):
  """Cast every array of `tree` to vary along all axes that the arrays in `like` vary
  along (a no-op outside shard_map)."""
  axes = varying_axes(*like)

  def cast(x):
    missing = tuple(sorted(axes - varying_axes(x)))
    if not missing:
      return x
    if hasattr(lax, "pcast"):
      return lax.pcast(x, missing, to="varying")
    return lax.pvary(x, missing)

  return jax.tree.map(cast, tree)
