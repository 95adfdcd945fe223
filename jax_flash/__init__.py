"""jax_flash: FlashAttention for JAX.

`jax_flash.attention(q, k, v, ...)` computes exact softmax attention tile by tile:
CUDA kernels (XLA FFI custom calls) on NVIDIA GPUs from sm80 on, a blockwise pure-JAX
implementation everywhere else. Flax integration lives in `jax_flash.flax`.
"""

from .api import attention

__all__ = ["attention"]
__version__ = "0.1.0"
