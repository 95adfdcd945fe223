"""Where a short call's time goes from JAX: per-call time in 10- and 100-call blocks and with
200 calls queued back to back, and the compiled HLO (one custom call?), for jax_flash's sm90
forward and cuDNN on a 16k sliding window and short dense calls. On a GPU machine with the
package installed: python3 tests/cuda/jax_dispatch_probe.py (tests/cuda/sm90_notes.md, session 6)."""
import statistics
import time

import jax
import jax.numpy as jnp
import jax_flash
from jax_flash import _cuda

def blocks(fn, args, calls, repeats=5):
  out = jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t0) / calls)
  return statistics.median(ts) * 1e3

def host_enqueue(fn, args, calls=200):
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  t1 = time.perf_counter()
  jax.block_until_ready(out)
  t2 = time.perf_counter()
  return (t1 - t0) / calls * 1e3, (t2 - t0) / calls * 1e3

key = jax.random.split(jax.random.key(0), 3)
cases = {
  "window_16k": ((1, 16384, 16, 128), dict(is_causal=True, local_window_size=(1024, 0))),
  "dense_512": ((32, 512, 16, 128), dict()),
  "dense_1k": ((16, 1024, 16, 128), dict()),
  "h256_512": ((32, 512, 8, 256), dict()),
  "h256_1k": ((16, 1024, 8, 256), dict()),
}
for name, (shape, kw) in cases.items():
  q, k, v = (jax.random.normal(kk, shape, jnp.bfloat16) for kk in key)
  for impl in ("jax_flash", "cudnn"):
    if impl == "jax_flash":
      with _cuda.force_arch(90):
        f = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, implementation="cuda", **kw))
        jax.block_until_ready(f(q, k, v))
    else:
      kw2 = dict(is_causal=kw.get("is_causal", False))
      if "local_window_size" in kw: kw2["local_window_size"] = kw["local_window_size"]
      f = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kw2))
      try:
        jax.block_until_ready(f(q, k, v))
      except Exception as e:
        print(name, impl, "failed:", str(e)[:200]); continue
    if name == "window_16k":
      txt = f.lower(q, k, v).compile().as_text()
      ops = [l.strip()[:160] for l in txt.splitlines() if ("custom-call" in l or "fusion" in l) and "=" in l and "ENTRY" not in l]
      print(f"{name} {impl}: {len(ops)} fusion/custom-call lines"); [print("   ", o) for o in ops[:8]]
    enq, tot = host_enqueue(f, (q, k, v))
    b10, b100 = blocks(f, (q, k, v), 10), blocks(f, (q, k, v), 100)
    print(f"{name:>11} {impl:>9}: host enqueue {enq:.3f} ms/call, 200 calls {tot:.3f} ms/call, "
          f"10-call blocks {b10:.3f}, 100-call blocks {b100:.3f} ms/call", flush=True)
