"""jax_flash: FlashAttention for JAX.

`jax_flash.attention(q, k, v, ...)` computes exact softmax attention tile by tile:
CUDA kernels (XLA FFI custom calls) on NVIDIA GPUs from sm80 on, a blockwise pure-JAX
implementation everywhere else. Flax integration lives in `jax_flash.flax` (imported on
first use, so plain JAX users never import Flax).
"""

import importlib

from .api import attention

__all__ = ["attention", "flax", "ring"]
__version__ = "0.1.0"


def __getattr__(name):
  if name in ("flax", "ring"):
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
