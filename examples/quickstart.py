"""Quickstart: jax_flash.attention next to jax.nn.dot_product_attention.

Runs in seconds on a CPU (the pure-JAX "xla" path) and on an NVIDIA GPU (the CUDA
kernels, picked automatically). Prints the implementation used, the difference from
jax.nn, and the gradient check.

  python examples/quickstart.py
"""

import logging
import time

import jax
import jax.numpy as jnp

import jax_flash


def main():
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  on_gpu = jax.default_backend() == "gpu"
  dtype = jnp.bfloat16 if on_gpu else jnp.float32
  batch, seq, heads, kv_heads, head_dim = 2, 1024, 8, 2, 64  # GQA: 4 queries per K/V head
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (batch, seq, heads, head_dim), dtype)
  k = jax.random.normal(kk, (batch, seq, kv_heads, head_dim), dtype)
  v = jax.random.normal(kv, (batch, seq, kv_heads, head_dim), dtype)

  attention = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, is_causal=True))
  out = attention(q, k, v).block_until_ready()
  start = time.perf_counter()
  out = attention(q, k, v).block_until_ready()
  elapsed = time.perf_counter() - start

  want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  diff = float(jnp.abs(out.astype(jnp.float32) - want.astype(jnp.float32)).max())

  loss = lambda q, k, v: jax_flash.attention(q, k, v, is_causal=True).astype(jnp.float32).sum()
  loss_ref = lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True).astype(jnp.float32).sum()
  dq = jax.jit(jax.grad(loss))(q, k, v)
  dq_ref = jax.grad(loss_ref)(q, k, v)
  gdiff = float(jnp.abs(dq.astype(jnp.float32) - dq_ref.astype(jnp.float32)).max())

  from jax_flash import _cuda  # only to report which path ran
  why_not = _cuda.kernels_available()
  path = "CUDA kernels" if why_not is None else f"pure-JAX 'xla' path ({why_not})"
  print(f"device: {jax.devices()[0].device_kind}   implementation: {path}")
  print(f"out {out.shape} {out.dtype}: max |jax_flash - jax.nn| = {diff:.2e}, "
        f"max |dq diff| = {gdiff:.2e}, forward {elapsed * 1e3:.2f} ms")
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
  if not (diff < tol and gdiff < tol):
    raise SystemExit(f"FAILED: differences above {tol}")
  print("OK")


if __name__ == "__main__":
  main()
