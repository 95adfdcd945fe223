"""Multi-process jax_flash: one program per host, one global mesh over every device.

Each process runs this script with its own --process-id; `jax.distributed` joins them
through the coordinator, after which `jax.devices()` lists the devices of all processes
and a `jit` over a global mesh runs SPMD across them. Here the mesh is (data, seq): the
batch is split over `data` and the sequence over `seq`, so `jax_flash.attention` runs ring
attention. The seq axis deliberately spans the processes, so K/V blocks cross process
boundaries; on a real cluster put `seq` inside a host (NVLink) and `data` across hosts.
Inputs are built from a seed on every
process (each process materializes only its own shards); the result and the gradients are
gathered and compared with the same call on one local device.

Two processes on one CPU machine (4 CPU devices each, 8 in all):

  python examples/multihost.py --process-id 0 --num-processes 2 --coordinator localhost:12355 &
  python examples/multihost.py --process-id 1 --num-processes 2 --coordinator localhost:12355

On GPU hosts drop --cpu-devices: each process uses its local GPUs. Pass --save out.npz
(process 0 writes the gathered output and gradients).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--process-id", type=int, required=True)
  p.add_argument("--num-processes", type=int, required=True)
  p.add_argument("--coordinator", default="localhost:12355", help="host:port of process 0")
  p.add_argument("--cpu-devices", type=int, default=0,
                 help="run on this many CPU devices per process (0: the local GPUs)")
  p.add_argument("--seq-shards", type=int, default=4, help="size of the mesh's seq axis")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seqlen", type=int, default=64)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv-heads", type=int, default=2)
  p.add_argument("--head-dim", type=int, default=16)
  p.add_argument("--causal", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--timeout", type=int, default=60, help="seconds to wait for the peers")
  p.add_argument("--save", default=None, help="process 0 writes the results here (.npz)")
  return p.parse_args(argv)


def make_inputs(args):
  """q, k, v and the output cotangent, identical on every process (numpy, float32)."""
  import numpy as np

  rng = np.random.default_rng(args.seed)
  b, t, h = args.batch, args.seqlen, args.head_dim
  shapes = [(b, t, args.heads, h), (b, t, args.kv_heads, h), (b, t, args.kv_heads, h),
            (b, t, args.heads, h)]
  return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  if args.cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id,
                             initialization_timeout=args.timeout)

  import numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  import jax_flash

  devices = np.array(jax.devices())  # every process's devices, in the same global order
  if devices.size % args.seq_shards:
    raise ValueError(f"--seq-shards {args.seq_shards} must divide the {devices.size} devices")
  # Devices are listed process by process; the transpose spreads `seq` over processes.
  mesh = Mesh(devices.reshape(args.seq_shards, -1).T, ("data", "seq"))
  rows = NamedSharding(mesh, P("data", "seq"))

  def attention_and_grads(q, k, v, dout):
    f = lambda q, k, v: jax_flash.attention(q, k, v, is_causal=args.causal)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(dout))

  host = make_inputs(args)
  # Each process builds only the shards that live on its own devices.
  glob = [jax.make_array_from_callback(x.shape, rows, lambda idx, x=x: x[idx]) for x in host]
  start = time.perf_counter()
  sharded = jax.jit(attention_and_grads, in_shardings=(rows,) * 4, out_shardings=(rows,) * 4)
  results = [np.asarray(r) for r in multihost_utils.process_allgather(sharded(*glob), tiled=True)]
  seconds = time.perf_counter() - start

  local = jax.local_devices()[0]  # the single-device reference, on this process alone
  reference = jax.jit(attention_and_grads)(*[jax.device_put(x, local) for x in host])
  errors = [float(np.abs(r - np.asarray(w)).max() / np.abs(np.asarray(w)).max())
            for r, w in zip(results, reference)]
  report = dict(process=args.process_id, devices=int(devices.size), mesh=dict(mesh.shape),
                max_rel_err=max(errors), seconds=round(seconds, 3))
  print(json.dumps(report), flush=True)
  if args.save and args.process_id == 0:
    np.savez(args.save, out=results[0], dq=results[1], dk=results[2], dv=results[3])
  multihost_utils.sync_global_devices("jax_flash multihost example done")
  jax.distributed.shutdown()
  return 0 if max(errors) <= 1e-5 else 1


if __name__ == "__main__":
  sys.exit(main())
