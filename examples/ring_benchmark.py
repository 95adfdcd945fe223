"""Ring attention (context parallelism) benchmark: does communication hide behind compute?

Times, in one process on the visible GPUs (BENCHMARKS.md protocol: jit, two warm-up calls,
then 10 calls enqueued and the last one waited for, median of 5 such repeats):
  * one GPU at --single-seqlen (default 32k),
  * the ring over all GPUs at --ring-seqlen (default 128k): `jax_flash.attention` under jit
    with the sequence axis sharded (contiguous shards, zig-zag permutation inside), and
    `jax_flash.ring.ring_attention` in shard_map on shards already in zig-zag order,
and reports per-GPU TFLOP/s of forward, backward and forward+backward. FLOPs: forward
4*B*N*T*S*H, halved when causal; backward 2.5x forward; backward time is
time(fwd+bwd) - time(fwd). Acceptance: ring fwd+bwd per-GPU TFLOP/s >= 85% of one GPU's.
It also checks that the ring's output and gradients match one GPU at --check-seqlen.

  python examples/ring_benchmark.py                 # GPUs: 32k vs 128k, hdim 128, causal
  python examples/ring_benchmark.py --smoke         # CPU, 4 devices, tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--smoke", action="store_true",
                 help="CPU with 4 devices, tiny shapes, one repeat: checks the script runs")
  p.add_argument("--single-seqlen", type=int, default=32768)
  p.add_argument("--ring-seqlen", type=int, default=131072)
  p.add_argument("--check-seqlen", type=int, default=8192)
  p.add_argument("--hidden", type=int, default=2048, help="heads = hidden / head_dim")
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  p.add_argument("--no-causal", dest="causal", action="store_false")
  p.add_argument("--implementation", default=None, choices=[None, "cuda", "xla"],
                 help="default: cuda on GPUs, xla elsewhere")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--calls", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--target", type=float, default=0.85)
  p.add_argument("--json", default="ring_benchmark.json", help="where to write the results")
  args = p.parse_args(argv)
  if args.smoke:
    args.single_seqlen, args.ring_seqlen, args.check_seqlen = 64, 256, 128
    args.hidden, args.head_dim, args.dtype = 64, 32, "float32"
    args.repeats, args.calls, args.warmup = 1, 2, 1
  return args


def median_seconds(fn, inputs, args):
  """The BENCHMARKS.md protocol, shared with benchmark.py beside this file."""
  from benchmark import time_per_call

  return time_per_call(fn, inputs, args.warmup, args.repeats, args.calls)[0]


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  if args.smoke:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 4)
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  import jax_flash
  from benchmark import fwd_flops
  from jax_flash import ring

  impl = args.implementation or ("cuda" if jax.default_backend() == "gpu" else "xla")
  devices = jax.devices()
  n_dev = len(devices)
  heads, dtype = args.hidden // args.head_dim, jnp.dtype(args.dtype)
  mesh = Mesh(np.array(devices), ("seq",))
  rows = NamedSharding(mesh, P(None, "seq"))
  attend = lambda q, k, v: jax_flash.attention(q, k, v, is_causal=args.causal,
                                               implementation=impl)

  def fwd_bwd(attend):
    def run(q, k, v, dout):
      out, vjp = jax.vjp(attend, q, k, v)
      return out, vjp(dout)
    return run

  def inputs(seqlen, seed, sharding=None):
    keys = jax.random.split(jax.random.key(seed), 4)
    shape = (args.batch, seqlen, heads, args.head_dim)
    make = jax.jit(lambda key: jax.random.normal(key, shape, dtype), out_shardings=sharding)
    return [make(key) for key in keys]  # q, k, v, dout: random normal, never zeros

  zig_attend = lambda q, k, v: ring.ring_attention(
      q, k, v, axis_name="seq", is_causal=args.causal, layout="zigzag", implementation=impl)
  shard_mapped = lambda f, n_in: jax.shard_map(
      f, mesh=mesh, in_specs=(P(None, "seq"),) * n_in, check_vma=False,
      out_specs=P(None, "seq") if n_in == 3 else (P(None, "seq"), (P(None, "seq"),) * 3))
  # name, seqlen, devices, fwd, fwd+bwd, sharding of the inputs. (Random inputs need no
  # zig-zag permutation for timing: the layout only says which positions a shard holds.)
  cases = [
      ("one GPU" if impl == "cuda" else "one device", args.single_seqlen, 1,
       jax.jit(attend), jax.jit(fwd_bwd(attend)), None),
      ("ring, jit (contiguous)", args.ring_seqlen, n_dev, jax.jit(attend),
       jax.jit(fwd_bwd(attend)), rows),
      ("ring, shard_map (zigzag)", args.ring_seqlen, n_dev,
       jax.jit(shard_mapped(zig_attend, 3)), jax.jit(shard_mapped(fwd_bwd(zig_attend), 4)),
       rows),
  ]
  results = []
  for name, seqlen, used, fwd, both, sharding in cases:
    q, k, v, dout = inputs(seqlen, seed=0, sharding=sharding)
    t_fwd = median_seconds(fwd, (q, k, v), args)
    t_both = median_seconds(both, (q, k, v, dout), args)
    f = fwd_flops(args.batch, heads, seqlen, args.head_dim, args.causal) / used
    results.append(dict(
        name=name, seqlen=seqlen, devices=used, fwd_ms=1e3 * t_fwd, fwd_bwd_ms=1e3 * t_both,
        bwd_ms=1e3 * (t_both - t_fwd), tflops_fwd=f / t_fwd / 1e12,
        tflops_bwd=2.5 * f / max(t_both - t_fwd, 1e-12) / 1e12,
        tflops_fwd_bwd=3.5 * f / t_both / 1e12))
    del q, k, v, dout

  # Values: the ring over all devices against one device, same inputs.
  q, k, v, dout = inputs(args.check_seqlen, seed=1)
  want = jax.jit(fwd_bwd(attend))(q, k, v, dout)
  got = jax.jit(fwd_bwd(attend), in_shardings=(rows,) * 4)(q, k, v, dout)
  err = max(float(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)).max()
                  / jnp.abs(w.astype(jnp.float32)).max())
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2

  base = results[0]["tflops_fwd_bwd"]
  for r in results:
    r["ratio_fwd_bwd"] = r["tflops_fwd_bwd"] / base
  device = f"{n_dev} x {devices[0].device_kind}"
  print(f"\nring attention, {device}, {args.dtype}, hdim {args.head_dim}, heads {heads}, "
        f"batch {args.batch}, {'causal' if args.causal else 'non-causal'}, "
        f"implementation {impl}, jax {jax.__version__}")
  print(f"{'case':<26} {'seqlen':>7} {'dev':>4} {'fwd ms':>9} {'bwd ms':>9} "
        f"{'TFLOP/s/dev fwd/bwd/both':>26} {'vs one':>7}")
  for r in results:
    tf = f"{r['tflops_fwd']:.4g} / {r['tflops_bwd']:.4g} / {r['tflops_fwd_bwd']:.4g}"
    print(f"{r['name']:<26} {r['seqlen']:>7} {r['devices']:>4} {r['fwd_ms']:>9.3f} "
          f"{r['bwd_ms']:>9.3f} {tf:>26} {r['ratio_fwd_bwd']:>7.2f}")
  ok_values = err <= tolerance
  ok_speed = results[1]["ratio_fwd_bwd"] >= args.target
  print(f"values at seqlen {args.check_seqlen}: max relative error {err:.2e} "
        f"(tolerance {tolerance:.0e}) -> {'ok' if ok_values else 'MISMATCH'}")
  print(f"ring (jit) fwd+bwd per device {results[1]['ratio_fwd_bwd']:.1%} of one device "
        f"(target {args.target:.0%}) -> {'ok' if ok_speed else 'BELOW TARGET'}")
  with open(args.json, "w") as f:
    json.dump(dict(device=device, jax=jax.__version__, implementation=impl,
                   dtype=args.dtype, head_dim=args.head_dim, heads=heads, batch=args.batch,
                   causal=args.causal, check_seqlen=args.check_seqlen, check_rel_err=err,
                   check_ok=ok_values, target=args.target, speed_ok=ok_speed,
                   smoke=args.smoke, results=results), f, indent=2)
  print(f"wrote {args.json}")
  return 0 if ok_values else 1


if __name__ == "__main__":
  sys.exit(main())
