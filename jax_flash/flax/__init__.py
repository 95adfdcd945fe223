"""Flax integration.

  jax_flash.flax.dot_product_attention   drop-in `attention_fn` for
      flax.linen.MultiHeadDotProductAttention and flax.nnx.MultiHeadAttention
  jax_flash.flax.linen.MultiHeadDotProductAttention (alias MultiHeadAttention)
  jax_flash.flax.nnx.MultiHeadAttention
      Flax's modules with the same parameters, plus num_kv_heads, is_causal,
      local_window_size, softcap and segment ids / sequence lengths at call time.

`linen` and `nnx` are imported on first access, so `import jax_flash` never needs Flax.
"""

from __future__ import annotations

import importlib

from ._adapter import dot_product_attention

__all__ = ["dot_product_attention", "linen", "nnx"]


def __getattr__(name: str):
  if name in ("linen", "nnx"):
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
