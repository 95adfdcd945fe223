"""cuDNN forward timings at the benchmark shapes, to read tests/cuda/fwd_check's numbers against.

Same protocol as fwd_check bench (BENCHMARKS.md): 16k tokens, hidden 2048, bf16; jit, two
warm-up calls, then 10 calls enqueued and a block on the last; median of 5 repeats.
Run on a GPU machine in the same session as fwd_check: only ratios from one run compare.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp


def bench(hdim: int, seqlen: int, causal: bool) -> float:
  batch, heads = 16384 // seqlen, 2048 // hdim
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (batch, seqlen, heads, hdim), jnp.bfloat16) for key in keys)
  fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=causal, implementation="cudnn"))
  for _ in range(2):
    fn(q, k, v).block_until_ready()
  reps = []
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(10):
      out = fn(q, k, v)
    out.block_until_ready()
    reps.append((time.perf_counter() - start) / 10)
  return statistics.median(reps)


def main() -> None:
  seqlens = [int(s) for s in sys.argv[1:]] or [512, 2048, 8192, 16384]
  print(f"device: {jax.devices()[0].device_kind}")
  print(f"{'cudnn':<24} {'causal':<6} {'seqlen':<6} {'ms':>9} {'TFLOP/s':>9}")
  for hdim in (64, 128, 256):
    for causal in (False, True):
      for seqlen in seqlens:
        try:
          t = bench(hdim, seqlen, causal)
        except Exception as e:  # report and go on: one unsupported shape must not end the table
          print(f"cudnn h{hdim:<19} {int(causal):<6} {seqlen:<6} failed: {type(e).__name__}: {e}"[:200])
          continue
        flops = 4 * 16384 * 2048 * seqlen / (2 if causal else 1)
        print(f"cudnn h{hdim:<19} {int(causal):<6} {seqlen:<6} {t * 1e3:9.3f} {flops / t * 1e-12:9.1f}")


if __name__ == "__main__":
  main()
