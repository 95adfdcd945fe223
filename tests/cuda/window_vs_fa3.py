"""Sliding window 1024 (causal) at 16k tokens, 16 heads, hdim 128, bf16: FlashAttention-3
(flash-attn3-jax, window_size=(1024, 0)) against jax_flash, each as a fraction of its own
dense TFLOP/s (visible pairs counted; settled timings, two rounds, one process). Session 10's
numbers are in tests/cuda/sm90_notes.md.

  pip install --no-deps flash_attn3_jax-0.2.3-cp312-*.whl    # see BENCHMARKS.md
  python tests/cuda/window_vs_fa3.py                          # from the repo root
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples"))
from benchmark import time_settled
import jax_flash
from flash_attn3_jax import flash_mha

t, n, h, w = 16384, 16, 128, 1024
keys = jax.random.split(jax.random.key(0), 3)
q, k, v = (jax.random.normal(kk, (1, t, n, h), jnp.bfloat16) for kk in keys)
i = np.arange(t)
pairs = {"dense": t * t, "causal": t * (t + 1) // 2,
         "window": int(np.sum(np.minimum(i, w) + 1))}
cases = {"dense": {}, "causal": dict(is_causal=True)}
fa3_kw = dict(cases, window=dict(is_causal=True, window_size=(w, 0)))
jf_kw = dict(cases, window=dict(is_causal=True, local_window_size=(w, 0)))
fns = {}
for case in pairs:
  fns["fa3", case] = jax.jit(functools.partial(flash_mha, **fa3_kw[case]))
  fns["jf", case] = jax.jit(functools.partial(jax_flash.attention, implementation="cuda",
                                              **jf_kw[case]))
ref = fns["jf", "window"](q, k, v).astype(jnp.float32)
got = fns["fa3", "window"](q, k, v).astype(jnp.float32)
print("fa3 window vs jax_flash: max abs diff", float(jnp.max(jnp.abs(got - ref))))
for r in range(2):
  tf = {}
  for (who, case), fn in fns.items():
    sec = time_settled(fn, (q, k, v), 0.3)[0]
    tf[who, case] = 4.0 * pairs[case] * n * h / sec / 1e12
  for who in ("fa3", "jf"):
    win = tf[who, "window"]
    print(f"round {r} {who}: dense {tf[who, 'dense']:.1f} causal {tf[who, 'causal']:.1f} "
          f"window {win:.1f} -> window/dense {win / tf[who, 'dense']:.2f}, "
          f"window/causal {win / tf[who, 'causal']:.2f}", flush=True)
