"""Forward timings of cuDNN (jax.nn) and FlashAttention-3 (flash-attn3-jax) at the benchmark shapes,
to read tests/cuda/sm90_fwd_check's numbers against in the same run (BENCHMARKS.md protocol:
16k tokens, hidden 2048, bf16; jit, two warm-up calls, then 10 calls enqueued and a block on the
last; median of 5 repeats).

  python3 tests/cuda/sm90_peers.py [seqlen ...]

FlashAttention-3 runs where its wheel is importable and has kernels (head dim 128 only).
"""

import os
import sys

import jax
import jax.numpy as jnp

# The timing protocol lives once, in examples/benchmark.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
from benchmark import time_per_call  # noqa: E402

try:
  import flash_attn3_jax
except ImportError as e:  # the peer is optional: say so and time cuDNN alone
  print(f"flash-attn3-jax not available ({e}); timing cuDNN only")
  flash_attn3_jax = None


def peers(causal: bool):
  yield "cudnn", jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=causal, implementation="cudnn"))
  if flash_attn3_jax is not None:
    yield "fa3", jax.jit(lambda q, k, v: flash_attn3_jax.flash_mha(q, k, v, is_causal=causal))


def main() -> None:
  seqlens = [int(s) for s in sys.argv[1:]] or [512, 1024, 2048, 4096, 8192, 16384]
  print(f"device: {jax.devices()[0].device_kind}")
  print(f"{'peer':<8} {'hdim':<5} {'causal':<6} {'seqlen':<6} {'ms':>9} {'TFLOP/s':>9}")
  for hdim in (128, 64, 256):
    for causal in (False, True):
      for seqlen in seqlens:
        if hdim != 128 and seqlen not in (1024, 4096, 16384):
          continue
        batch, heads = 16384 // seqlen, 2048 // hdim
        keys = jax.random.split(jax.random.key(seqlen + hdim), 3)
        q, k, v = (jax.random.normal(key, (batch, seqlen, heads, hdim), jnp.bfloat16) for key in keys)
        flops = 4 * 16384 * 2048 * seqlen / (2 if causal else 1)
        for name, fn in peers(causal):
          if name == "fa3" and hdim != 128:
            continue
          try:
            t, _ = time_per_call(fn, (q, k, v))
          except Exception as e:  # report and go on: one unsupported shape must not end the table
            print(f"{name:<8} {hdim:<5} {int(causal):<6} {seqlen:<6} failed: {type(e).__name__}: {e}"[:200])
            continue
          print(f"{name:<8} {hdim:<5} {int(causal):<6} {seqlen:<6} {t * 1e3:9.3f} {flops / t * 1e-12:9.1f}",
                flush=True)


if __name__ == "__main__":
  main()
