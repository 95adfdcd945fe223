"""The static description of one attention call, shared by every implementation.

`api.attention` builds one `AttnConfig` after validation; the implementations
(`_xla`, `_cuda`) and the partitioning layer read it and nothing else static.
Array-valued extras (bias, mask, lengths, segment ids) travel beside it in `Extras`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

UNBOUNDED = -1  # a window side with no limit


@dataclasses.dataclass(frozen=True)
class AttnConfig:
  scale: float
  # Key j is visible from query i iff i - window_left <= j <= i + window_right
  # (top-left aligned as in jax.nn.dot_product_attention); UNBOUNDED = no limit.
  # is_causal is folded in as window_right = min(window_right, 0).
  window_left: int = UNBOUNDED
  window_right: int = UNBOUNDED
  softcap: float | None = None
  return_lse: bool = False

  @property
  def is_causal(self) -> bool:
    return self.window_right == 0 and self.window_left == UNBOUNDED

  @property
  def has_window(self) -> bool:
    return self.window_left != UNBOUNDED or self.window_right != UNBOUNDED


class Extras(NamedTuple):
  """Optional array inputs; None where absent. Shapes are already canonical:

  bias:  float, 4-D, each dim 1 or full: [B|1, N|1, T|1, S|1]
  mask:  bool, same broadcast rule as bias
  q_seqlen, kv_seqlen: int32 [B]
  q_segment_ids: int32 [B, T];  kv_segment_ids: int32 [B, S]
  """

  bias: Any = None
  mask: Any = None
  q_seqlen: Any = None
  kv_seqlen: Any = None
  q_segment_ids: Any = None
  kv_segment_ids: Any = None

  def features(self) -> tuple[str, ...]:
    """Names of the extras that are present (used for routing and messages)."""
    return tuple(name for name, x in zip(self._fields, self) if x is not None)
