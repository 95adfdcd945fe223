"""Masked attention benchmark: does masked work cost nothing?

One sequence of 16k tokens (batch 1, 16 heads, head dim 128, bf16; the BENCHMARKS.md timing
protocol via benchmark.py), jax_flash's kernels with and without masks. FLOPs count only the
(query, key) pairs a mask leaves visible, so a kernel that skips masked tiles keeps its dense
TFLOP/s and one that computes them and throws them away drops in proportion:

  dense           no mask (the reference TFLOP/s), and dense causal
  window_1024     causal sliding window: query i sees keys i-1024 .. i
  docs_8x2k       8 packed documents of 2048 tokens (segment ids), non-causal inside each
  docs_8x2k_c     the same, causal inside each document
  lengths_half    padding: only the first 8k queries and keys are real (lengths)
  softcap / bias  dense with softcap 30 / a [1, N, 1, S] bias (the per-element path)

Each row prints fwd and bwd TFLOP/s and their fraction of the dense non-causal row (the
causal variants also of the dense causal row); the dense rows a case is divided by are timed
again with it. Two timings, because the GPU's clock follows its load with a lag of tens of ms
(it falls under power-heavy work and recovers under light work) and a case as short as the
window (0.3 ms) runs at whatever clock the work before it left:
  settled      each function runs back to back for 0.3 s, then the protocol's 5 x 10 calls
               (benchmark.time_settled): every kernel at the clock its own load sustains.
  alternating  the case and its dense rows in turn, repeat by repeat, 10 calls each
               (benchmark.time_alternating): the case always right after heavy dense work.
The table's TFLOP/s and fractions are settled; "alt" is the alternating fraction. On Hopper
both forward families run (columns sm90, sm80; the backward is shared). Writes JSON to --out.

  python examples/mask_benchmark.py                 # GPU
  python examples/mask_benchmark.py --smoke         # CPU, the "xla" path, tiny shapes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def cases(t: int, docs: int, window: int):
  """name -> (attention kwargs, visible pairs per head, causal baseline?)."""
  doc = t // docs
  ids = jnp.asarray(np.repeat(np.arange(docs, dtype=np.int32), doc)[None])
  half = jnp.asarray([t // 2], jnp.int32)
  i = np.arange(t)
  return {
      "dense": (dict(), t * t, False),
      "dense_causal": (dict(is_causal=True), t * (t + 1) // 2, True),
      f"window_{window}": (dict(is_causal=True, local_window_size=(window, 0)),
                           int(np.sum(np.minimum(i, window) + 1)), True),
      f"docs_{docs}x{doc}": (dict(q_segment_ids=ids, kv_segment_ids=ids), docs * doc * doc,
                             False),
      f"docs_{docs}x{doc}_c": (dict(q_segment_ids=ids, kv_segment_ids=ids, is_causal=True),
                               docs * doc * (doc + 1) // 2, True),
      "lengths_half": (dict(query_seq_lengths=half, key_value_seq_lengths=half),
                       (t // 2) ** 2, False),
      "softcap": (dict(softcap=30.0), t * t, False),
      "bias": (dict(bias="per_key"), t * t, False),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, the xla path")
  p.add_argument("--out", default="mask_bench_out")
  args = p.parse_args(argv)

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from benchmark import time_alternating, time_settled
  from tqdm import tqdm

  import jax_flash

  t, n, h, docs, window = (256, 2, 64, 4, 32) if args.smoke else (16384, 16, 128, 8, 1024)
  on_gpu = jax.default_backend() == "gpu"
  impl = "cuda" if on_gpu else "xla"
  archs = [None]
  if on_gpu and str(jax.devices()[0].compute_capability).startswith("9."):
    archs = [90, 80]
  keys = jax.random.split(jax.random.key(0), 5)
  q, k, v, dout = (jax.random.normal(key, (1, t, n, h), jnp.bfloat16) for key in keys[:4])
  per_key_bias = jax.random.normal(keys[4], (1, n, 1, t), jnp.float32)
  fwd_args, both_args = (q, k, v), (q, k, v, dout)

  from jax_flash import _cuda

  def compiled(kw, arch):
    """The case's forward and forward+backward, compiled with kernel family `arch`."""
    kw = dict(kw)
    if kw.get("bias") == "per_key":
      kw["bias"] = per_key_bias
    # Arrays (segment ids, lengths, bias) are arguments, as in training. Closed over they
    # were constants, and XLA folded the segment-id pre-pass at compile time (docs_8x2k_c
    # forward, H200: 380 TFLOP/s with constant ids against 333-350 with ids as arguments,
    # before the pre-pass became a kernel).
    arrays = {name: x for name, x in kw.items() if isinstance(x, jax.Array)}
    static = {name: x for name, x in kw.items() if name not in arrays}

    def attn(q, k, v, arrays):
      return jax_flash.attention(q, k, v, implementation=impl, **arrays, **static)

    def fwd_bwd(q, k, v, dout, arrays):
      out, vjp = jax.vjp(lambda q, k, v: attn(q, k, v, arrays), q, k, v)
      return out, vjp(dout)

    # Traced (first call) inside force_arch; later calls reuse the trace. (AOT-compiled
    # functions time the same: window fwd 0.274-0.280 ms against 0.280 ms jitted, H200.)
    fwd, both = jax.jit(attn), jax.jit(fwd_bwd)
    fns = ((lambda q, k, v: fwd(q, k, v, arrays)),
           (lambda q, k, v, dout: both(q, k, v, dout, arrays)))
    with _cuda.force_arch(arch) if arch else contextlib.nullcontext():
      jax.block_until_ready((fns[0](*fwd_args), fns[1](*both_args)))
    return fns

  table = cases(t, docs, window)
  flops = {name: 4.0 * pairs * n * h for name, (_, pairs, _) in table.items()}
  refs = {arch: {name: compiled(table[name][0], arch) for name in ("dense", "dense_causal")}
          for arch in archs}
  settle_s = 0.0 if args.smoke else 0.3

  def timings(group, args_, alternating):
    """Median seconds per call of each function of group, in group's order."""
    if alternating:
      return [sec for sec, _ in time_alternating([(fn, args_) for fn in group])]
    return [time_settled(fn, args_, settle_s)[0] for fn in group]

  rows = []
  for name, (kw, pairs, causal) in tqdm(table.items(), unit="case"):
    for arch in archs:
      fns = refs[arch][name] if name in refs[arch] else compiled(kw, arch)
      # Each case is timed with the dense rows it is divided by, both ways (docstring).
      bases = [b for b in ("dense", "dense_causal") if b != name and (causal or b == "dense")]
      group = [fns] + [refs[arch][b] for b in bases]
      labels = [name] + bases
      row = dict(case=name, arch=arch, causal_baseline=causal, visible_pairs=pairs)
      for alt in (False, True):
        fwd = timings([g[0] for g in group], fwd_args, alt)
        both = timings([g[1] for g in group], both_args, alt)
        tflops = {}
        for label, f, b in zip(labels, fwd, both):
          tflops[label, "fwd"] = flops[label] / f / 1e12
          tflops[label, "bwd"] = 2.5 * flops[label] / max(b - f, 1e-9) / 1e12
        pre = "alt_" if alt else ""
        if not alt:
          row.update(fwd_ms=fwd[0] * 1e3, bwd_ms=(both[0] - fwd[0]) * 1e3)
        for d in ("fwd", "bwd"):
          row[f"{pre}{d}_tflops"] = tflops[name, d]
          for base in ("dense", "dense_causal"):
            if (base, d) in tflops:
              row[f"{pre}{base}_{d}_tflops"] = tflops[base, d]
              row[f"{pre}{d}_frac_{base}"] = tflops[name, d] / tflops[base, d]
      rows.append(row)

  device = jax.devices()[0].device_kind
  print(f"\n{device}, T=S={t}, N={n}, H={h}, bf16; TFLOP/s over visible pairs, settled "
        f"(fraction of dense | of dense causal; alt: the alternating timing's fractions)")
  print(f"{'case':>16} {'fwd':>5} {'visible':>8} {'fwd TF/s':>9} {'frac':>12} {'alt':>12} "
        f"{'bwd TF/s':>9} {'frac':>12} {'alt':>12}")
  for r in rows:
    fracs = {}
    for key in ("fwd", "bwd", "alt_fwd", "alt_bwd"):
      fracs[key] = f"{r[f'{key}_frac_dense']:.2f}" + (
          f" | {r[f'{key}_frac_dense_causal']:.2f}" if r["causal_baseline"] else "")
    arch = f"sm{r['arch']}" if r["arch"] else impl
    print(f"{r['case']:>16} {arch:>5} {r['visible_pairs'] / t / t:>7.1%} "
          f"{r['fwd_tflops']:>9.4g} {fracs['fwd']:>12} {fracs['alt_fwd']:>12} "
          f"{r['bwd_tflops']:>9.4g} {fracs['bwd']:>12} {fracs['alt_bwd']:>12}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "mask_benchmark.json"), "w") as f:
    json.dump(dict(device=device, t=t, n=n, h=h, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                   rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
