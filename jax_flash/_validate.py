"""Argument checks and canonicalization for `jax_flash.attention`.

Every user error is a ValueError or TypeError whose message names the argument and the
offending value; nothing here is an `assert`. The result is one canonical call:
4-D q/k/v ([B,T,N,H] with all leading dims flattened into B), an `Extras` of canonical
arrays, and a static `AttnConfig`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ._config import UNBOUNDED, AttnConfig, Extras

IMPLEMENTATIONS = (None, "cuda", "xla")


class Call(NamedTuple):
  q: Any
  k: Any
  v: Any
  extras: Extras
  cfg: AttnConfig
  lead: tuple[int, ...]  # the caller's leading batch dims ((), (B,), (B1, B2), ...)

  def result(self, out, lse):
    """The caller's view of a canonical (out [B,T,N,Hv], lse [B,N,T]): leading dims
    restored, lse only when return_lse."""
    out = out.reshape(self.lead + out.shape[1:])
    if not self.cfg.return_lse:
      return out
    return out, lse.reshape(self.lead + lse.shape[1:])


def _as_array(x, name: str):
  if x is None:
    return None
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    try:
      x = jnp.asarray(x)
    except TypeError as e:
      raise TypeError(f"{name} must be an array, got {type(x).__name__}") from e
  return x


def _check_float(x, name: str):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32), "
                    f"got {x.dtype}")


def _check_int(x, name: str):
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")


def _flatten_lead(x, lead: tuple[int, ...], name: str, tail: tuple[int, ...]):
  """x of shape lead + tail -> [prod(lead) or 1] + tail."""
  if tuple(x.shape) != tuple(lead) + tuple(tail):
    raise ValueError(f"{name} must have shape {tuple(lead) + tuple(tail)} "
                     f"(batch dims {tuple(lead)}), got {tuple(x.shape)}")
  return x.reshape((math.prod(lead),) + tuple(tail))


def _pairwise(x, name: str, lead, n: int, t: int, s: int):
  """bias/mask broadcastable to lead + [N, T, S] -> 4-D [B|1, N|1, T|1, S|1]."""
  full = tuple(lead) + (n, t, s)
  if x.ndim > len(full):
    raise ValueError(f"{name} has rank {x.ndim} but must be broadcastable to "
                     f"[batch..., N, T, S] = {full}, got shape {tuple(x.shape)}")
  shape = (1,) * (len(full) - x.ndim) + tuple(x.shape)
  for got, want in zip(shape, full):
    if got not in (1, want):
      raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast to "
                       f"[batch..., N, T, S] = {full}")
  x = x.reshape(shape)
  blead = shape[: len(lead)]
  if all(d == 1 for d in blead):
    return x.reshape((1,) + shape[len(lead):])
  x = jnp.broadcast_to(x, tuple(lead) + shape[len(lead):])
  return x.reshape((math.prod(lead),) + shape[len(lead):])


def _window(local_window_size, is_causal: bool) -> tuple[int, int]:
  """(left, right) with UNBOUNDED for no limit; causal caps right at 0."""
  if local_window_size is None:
    left, right = UNBOUNDED, UNBOUNDED
  else:
    if isinstance(local_window_size, numbers.Integral) and not isinstance(
        local_window_size, bool):
      sides = (local_window_size, local_window_size)
    elif isinstance(local_window_size, (tuple, list)) and len(local_window_size) == 2:
      sides = tuple(local_window_size)
    else:
      raise TypeError("local_window_size must be an int or a (left, right) pair of ints "
                      f"(None for no limit on a side), got {local_window_size!r}")
    out = []
    for side, w in zip(("left", "right"), sides):
      if w is None:
        out.append(UNBOUNDED)
        continue
      if not isinstance(w, numbers.Integral) or isinstance(w, bool):
        raise TypeError(f"local_window_size {side} side must be an int or None, got {w!r}")
      if w < 0:
        raise ValueError(f"local_window_size {side} side must be >= 0, got {w}")
      out.append(int(w))
    left, right = out
  if is_causal:
    right = 0 if right == UNBOUNDED else min(right, 0)
  return left, right


def _finite_float(x, name: str) -> float:
  try:
    val = float(x)
  except (TypeError, ValueError) as e:  # includes traced values: these must be static
    raise TypeError(f"{name} must be a static Python number, got {x!r}") from e
  if not math.isfinite(val):
    raise ValueError(f"{name} must be finite, got {x!r}")
  return val


def _positive_float(x, name: str):
  if x is None:
    return None
  val = _finite_float(x, name)
  if val <= 0:
    raise ValueError(f"{name} must be positive, got {x!r}")
  return val


def canonicalize(query, key, value, bias, mask, *, scale, is_causal, local_window_size,
                 query_seq_lengths, key_value_seq_lengths, q_segment_ids, kv_segment_ids,
                 softcap, return_lse, implementation) -> Call:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  q, k, v = (_as_array(x, n) for x, n in ((query, "query"), (key, "key"), (value, "value")))
  for x, name in ((q, "query"), (k, "key"), (v, "value")):
    _check_float(x, name)
    if x.ndim < 3:
      raise ValueError(f"{name} must have rank >= 3 ([batch..., seq, heads, head_dim]), "
                       f"got shape {tuple(x.shape)}")
    if 0 in x.shape:
      raise ValueError(f"{name} has a zero-sized dimension: shape {tuple(x.shape)}")
  if not (q.dtype == k.dtype == v.dtype):
    raise TypeError("query, key and value must have the same dtype, got "
                    f"{q.dtype}, {k.dtype}, {v.dtype}")
  if not (q.ndim == k.ndim == v.ndim):
    raise ValueError("query, key and value must have the same rank, got shapes "
                     f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
  lead = tuple(q.shape[:-3])
  t, n, h = q.shape[-3:]
  s, n_kv, hk = k.shape[-3:]
  if tuple(k.shape[:-3]) != lead or tuple(v.shape[:-3]) != lead:
    raise ValueError("query, key and value must share their batch dims, got shapes "
                     f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
  if hk != h:
    raise ValueError(f"query head dim {h} != key head dim {hk} "
                     f"(query {tuple(q.shape)}, key {tuple(k.shape)})")
  if tuple(v.shape[-3:-1]) != (s, n_kv):
    raise ValueError("value must have the key's length and heads [batch..., S, K, Hv] = "
                     f"[..., {s}, {n_kv}, Hv], got value {tuple(v.shape)}")
  if n % n_kv:
    raise ValueError(f"query heads ({n}) must be a multiple of key/value heads ({n_kv})")
  if not isinstance(is_causal, (bool, np.bool_)):
    raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
  if not isinstance(return_lse, (bool, np.bool_)):
    raise TypeError(f"return_lse must be a bool, got {return_lse!r}")

  b = math.prod(lead)
  q4, k4, v4 = (x.reshape((b,) + tuple(x.shape[-3:])) for x in (q, k, v))

  bias, mask = _as_array(bias, "bias"), _as_array(mask, "mask")
  if bias is not None:
    _check_float(bias, "bias")
    bias = _pairwise(bias, "bias", lead, n, t, s)
  if mask is not None:
    if mask.dtype != jnp.bool_:
      raise TypeError(f"mask must be boolean (True = attend), got dtype {mask.dtype}; "
                      "pass additive masks as bias")
    mask = _pairwise(mask, "mask", lead, n, t, s)

  lengths = []
  for x, name in ((query_seq_lengths, "query_seq_lengths"),
                  (key_value_seq_lengths, "key_value_seq_lengths")):
    x = _as_array(x, name)
    if x is not None:
      _check_int(x, name)
      x = _flatten_lead(x, lead, name, ()).astype(jnp.int32)
    lengths.append(x)

  if (q_segment_ids is None) != (kv_segment_ids is None):
    given = "q_segment_ids" if q_segment_ids is not None else "kv_segment_ids"
    raise ValueError(f"q_segment_ids and kv_segment_ids go together: only {given} was "
                     "given (for self-attention pass the same ids twice)")
  segs = []
  for x, name, length in ((q_segment_ids, "q_segment_ids", t),
                          (kv_segment_ids, "kv_segment_ids", s)):
    x = _as_array(x, name)
    if x is not None:
      _check_int(x, name)
      x = _flatten_lead(x, lead, name, (length,)).astype(jnp.int32)
    segs.append(x)

  left, right = _window(local_window_size, bool(is_causal))
  scale = 1.0 / math.sqrt(h) if scale is None else _finite_float(scale, "scale")
  cfg = AttnConfig(scale=scale, window_left=left, window_right=right,
                   softcap=_positive_float(softcap, "softcap"), return_lse=bool(return_lse))
  extras = Extras(bias, mask, lengths[0], lengths[1], segs[0], segs[1])
  return Call(q4, k4, v4, extras, cfg, lead)
