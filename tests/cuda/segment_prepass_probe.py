"""The segment-id pre-pass on a GPU: jax.numpy (jax_flash._cuda.segment_ranges, XLA) against
the kernel (csrc/common/segment_ranges.cu), alone (GPU time per pre-pass: 50 in one
executable) and inside the forward of 8 packed documents of 2k in 16k tokens, with the ids as
jit arguments (as in training) and as closure constants (which XLA folds at compile time).
Session 10's numbers are in tests/cuda/sm90_notes.md.

  python tests/cuda/segment_prepass_probe.py     # from the repo root, jax_flash installed
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples"))
from benchmark import time_settled
import jax_flash
from jax_flash import _cuda

t, n, h = 16384, 16, 128
ids = jnp.asarray((np.arange(t) // 2048)[None], jnp.int32)
kernel_version = _cuda.device_segment_ranges


def xla_version(a, b):
  return _cuda.segment_ranges(a, b), _cuda.segment_ranges(b, a)


arrays = [ids + j for j in range(50)]
for r in range(2):
  for name, fn in (("xla", xla_version), ("kernel", kernel_version)):
    many = jax.jit(lambda xs: [fn(x, x) for x in xs])
    sec = time_settled(many, (arrays,), 0.3, calls=2)[0] / 50
    print(f"pre-pass {name}: {sec * 1e3:.4f} ms each in a batch of 50 (ids as arguments)",
          flush=True)
keys = jax.random.split(jax.random.key(0), 3)
q, k, v = (jax.random.normal(kk, (1, t, n, h), jnp.bfloat16) for kk in keys)
for arch in (90, 80):
  for causal in (False, True):
    pairs = 8 * 2048 * 2048 if not causal else 8 * 2048 * 2049 // 2
    res = {}
    for r in range(2):
      for name, impl in (("xla", xla_version), ("kernel", kernel_version)):
        _cuda.device_segment_ranges = impl  # _extra_operands looks it up at trace time

        def attn(q, k, v, i):
          return jax_flash.attention(q, k, v, is_causal=causal, q_segment_ids=i,
                                     kv_segment_ids=i, implementation="cuda")

        const = jax.jit(lambda q, k, v: attn(q, k, v, ids))
        arg = jax.jit(attn)
        for how, fn, a in (("const", const, (q, k, v)), ("arg", arg, (q, k, v, ids))):
          with _cuda.force_arch(arch):
            jax.block_until_ready(fn(*a))
          sec = time_settled(fn, a, 0.3)[0]
          res.setdefault(f"{name}/{how}", []).append(4.0 * pairs * n * h / sec / 1e12)
    _cuda.device_segment_ranges = kernel_version
    print(f"sm{arch} docs_8x2048{'_c' if causal else ''} fwd TFLOP/s: " +
          "; ".join(f"{k_} {' '.join(f'{x:.1f}' for x in v_)}" for k_, v_ in res.items()),
          flush=True)
