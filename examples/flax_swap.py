"""Switch an existing Flax model to jax_flash with one line.

The model below is ordinary Flax linen code built on `nn.MultiHeadDotProductAttention`
with a dense causal mask from `nn.make_causal_mask`. The only change is the module's
`attention_fn`:

    nn.MultiHeadDotProductAttention(num_heads=..., attention_fn=jax_flash.flax.dot_product_attention)

Parameters are untouched (the same checkpoint runs both ways). The script runs both
versions with the same parameters and prints the largest difference in the output and
in the gradients, and the time per training step (forward + backward, jit).

  python examples/flax_swap.py                 # CPU-sized
  python examples/flax_swap.py --seq-len 4096 --batch 8 --d-model 1024 --heads 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jax_flash.flax


class Block(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention_fn: Callable[..., Any] = nn.dot_product_attention

  @nn.compact
  def __call__(self, x, mask):
    h = nn.LayerNorm(dtype=self.dtype)(x)
    x = x + nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        attention_fn=self.attention_fn,  # <- the one-line swap
    )(h, mask=mask)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.Dense(4 * x.shape[-1], dtype=self.dtype)(h)
    return x + nn.Dense(x.shape[-1], dtype=self.dtype)(nn.gelu(h))


class LanguageModel(nn.Module):
  vocab: int
  d_model: int
  num_heads: int
  num_layers: int
  dtype: Any = jnp.float32
  attention_fn: Callable[..., Any] = nn.dot_product_attention

  @nn.compact
  def __call__(self, tokens):
    mask = nn.make_causal_mask(tokens)                  # dense [B, 1, T, T]
    x = nn.Embed(self.vocab, self.d_model, dtype=self.dtype)(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02),
                       (tokens.shape[-1], self.d_model)).astype(self.dtype)
    for _ in range(self.num_layers):
      x = Block(self.num_heads, self.dtype, self.attention_fn)(x, mask)
    return nn.Dense(self.vocab, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(x))


def loss_fn(model, params, tokens):
  logits = model.apply(params, tokens[:, :-1]).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


def time_per_step(fn, *args, repeats: int) -> float:
  """Median seconds per call of a jitted fn, after a compiling warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def max_abs_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(argv=None):
  p = argparse.ArgumentParser(description="Flax default attention vs jax_flash, one line apart")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--d-model", type=int, default=128)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--vocab", type=int, default=256)
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)

  dtype = jnp.dtype(args.dtype)
  make = functools.partial(LanguageModel, args.vocab, args.d_model, args.heads, args.layers,
                           dtype)
  flax_model = make(attention_fn=nn.dot_product_attention)
  fast_model = make(attention_fn=jax_flash.flax.dot_product_attention)

  tokens = jax.random.randint(jax.random.key(0), (args.batch, args.seq_len + 1), 0,
                              args.vocab)
  params = flax_model.init(jax.random.key(1), tokens[:, :-1])  # one checkpoint for both

  results = {}
  for name, model in (("flax default", flax_model), ("jax_flash", fast_model)):
    forward = jax.jit(lambda params, tokens, model=model: model.apply(params, tokens))
    step = jax.jit(jax.value_and_grad(functools.partial(loss_fn, model)))
    out = forward(params, tokens[:, :-1])
    loss, grads = step(params, tokens)
    seconds = time_per_step(step, params, tokens, repeats=args.repeats)
    results[name] = (out, loss, grads, seconds)

  (out_a, loss_a, grads_a, t_a), (out_b, loss_b, grads_b, t_b) = results.values()
  device = jax.devices()[0].device_kind
  print(f"{device} | batch {args.batch}, seq {args.seq_len}, d_model {args.d_model}, "
        f"{args.heads} heads, {args.layers} layers, {args.dtype}, causal mask")
  print(f"max |output difference|   {max_abs_diff(out_a, out_b):.3e}")
  print(f"max |gradient difference| {max_abs_diff(grads_a, grads_b):.3e}  "
        f"(loss {float(loss_a):.6f} vs {float(loss_b):.6f})")
  print(f"time per training step: flax default {t_a * 1e3:.2f} ms, "
        f"jax_flash {t_b * 1e3:.2f} ms (speed-up {t_a / t_b:.2f}x)")
  if jax.default_backend() != "gpu":
    print("(no GPU: jax_flash ran its pure-JAX path, which trades speed for O(N) memory)")
  print("Beyond the swap: jax_flash.flax.linen.MultiHeadDotProductAttention(is_causal=True) "
        "loads the same parameters and needs no dense mask.")


if __name__ == "__main__":
  main(sys.argv[1:])
