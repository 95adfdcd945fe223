"""Side-by-side attention benchmark: jax_flash against every attention a JAX user has.

Protocol (../shared/BENCHMARKS.md, FlashAttention's): 16384 tokens per batch
(B = tokens // T), hidden 2048 (N = hidden // H), T = S, random normal inputs;
FLOPs fwd = 4*B*N*T*S*H (halved when causal), bwd = 2.5 x fwd, and the backward time is
time(fwd+bwd through jax.vjp) - time(fwd). Each timing: jit, two warm-up calls, then 10
calls enqueued and the last one blocked on; the median of 5 such repeats. Before its 5 x 10
calls each function runs back to back for --settle-s seconds (0.3; time_settled): the GPU's
clock follows its load with a lag of tens of ms, so without it a peer timed right after
another's fwd+bwd ran at the clock that work left (H200, session 7: jax_flash's hdim-256
forward at seqlen 512 took 0.188 ms per call in the point-after-point run of session 5 and
0.151 ms in 10-call blocks on its own; cuDNN's 0.170 and 0.157). --settle-s 0 times as the
bare protocol does.

All peers run in this one process, point after point (a point runs every peer before
the next point starts), so each ratio printed compares numbers taken seconds apart on
the same GPU. A peer that fails at a point (OOM, unsupported shape, missing
package) is recorded with its reason and the run goes on; after a failure it is not
retried at longer sequences of the same (head dim, causal, direction).

  python examples/benchmark.py                       # the full grid on a GPU
  python examples/benchmark.py --smoke --out /tmp/b  # CPU, tiny shapes, seconds
  python examples/benchmark.py --memory              # peak memory of fwd+bwd, 16k and 128k

Each run writes results.json, results.csv and results.png to --out and prints the table
(plot_benchmark.py beside this file; it also re-renders saved results.json files).

Legend: B batch, T query length, S key length (= T), N heads, H head dim.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

WARMUP, CALLS, REPEATS = 2, 10, 5
FULL = dict(tokens=16384, hidden=2048, seqlens=(512, 1024, 2048, 4096, 8192, 16384),
            head_dims=(64, 128, 256))
# Smoke: shapes small enough that the CPU runs every point of every peer in seconds.
SMOKE = dict(tokens=512, hidden=256, seqlens=(128, 256), head_dims=(64,))
MEMORY = dict(seqlens=(16384, 131072), heads=16, head_dim=128)
MEMORY_SMOKE = dict(seqlens=(1024, 4096), heads=4, head_dim=64)
FAMILIES = ("cudnn", "fa3", "jax_flash", "pallas", "xla")


@dataclasses.dataclass
class Peer:
  name: str                          # column name, e.g. "jax_flash_sm90"
  family: str                        # what --peers selects: one of FAMILIES
  fn: Callable | None = None         # (q, k, v, is_causal) -> out [B, T, N, H]
  arch: int | None = None            # jax_flash kernel path forced while it runs
  unavailable: str | None = None     # why it cannot run at all in this process
  head_dims: tuple[int, ...] | None = None  # the only head dims it has kernels for


# -- peers --------------------------------------------------------------------------


def _is_hopper() -> bool:
  dev = jax.devices()[0]
  return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9.")


def _flash_peers(on_gpu: bool) -> list[Peer]:
  import jax_flash

  if not on_gpu:  # CPU smoke: the pure-JAX path is all there is
    return [Peer("jax_flash", "jax_flash", lambda q, k, v, c: jax_flash.attention(
        q, k, v, is_causal=c, implementation="xla"))]
  cuda = lambda q, k, v, c: jax_flash.attention(q, k, v, is_causal=c, implementation="cuda")
  if not _is_hopper():
    return [Peer("jax_flash", "jax_flash", cuda)]
  try:
    from jax_flash import _cuda
    force = getattr(_cuda, "force_arch", None)
  except ImportError as e:
    force, why = None, f"jax_flash._cuda cannot be imported ({e})"
  else:
    why = "jax_flash._cuda.force_arch is missing"
  if force is None:
    print(f"note: {why}: only the default dispatch runs (no separate sm80/sm90 columns)")
    return [Peer("jax_flash", "jax_flash", cuda)]
  return [Peer("jax_flash_sm90", "jax_flash", cuda, arch=90),
          Peer("jax_flash_sm80", "jax_flash", cuda, arch=80)]


def _fa3_peer() -> Peer:
  if not _is_hopper():
    return Peer("fa3", "fa3", unavailable="flash-attn3-jax runs on Hopper (sm90) only")
  try:
    import flash_attn3_jax
  except Exception as e:  # absent, or built against another jax
    return Peer("fa3", "fa3", unavailable=f"flash_attn3_jax not importable: {e}")
  # The 0.2.3 wheel instantiates only head dim 128 (`nm -DC` lists run_mha_fwd_<90, *,
  # 128, ...> and nothing else); other head dims are not attempted, as a missing kernel
  # could abort the whole process.
  return Peer("fa3", "fa3", lambda q, k, v, c: flash_attn3_jax.flash_mha(q, k, v, is_causal=c),
              head_dims=(128,))


def _pallas_peer() -> Peer:
  try:
    from jax.experimental.pallas.ops.gpu import attention as pallas_attention
  except Exception as e:
    return Peer("pallas", "pallas", unavailable=f"Pallas GPU attention not importable: {e}")
  # mha(q, k, v, segment_ids, sm_scale=1.0, causal=False): [B, T, N, H]; its default
  # scale is 1, so pass the same 1/sqrt(H) as the others.
  return Peer("pallas", "pallas", lambda q, k, v, c: pallas_attention.mha(
      q, k, v, None, sm_scale=1.0 / math.sqrt(q.shape[-1]), causal=c))


def make_peers(selected: list[str], on_gpu: bool) -> list[Peer]:
  """Every peer, in run order, filtered by family or column name."""
  nn_attn = lambda impl: (lambda q, k, v, c: jax.nn.dot_product_attention(
      q, k, v, is_causal=c, implementation=impl))
  flash = any(x.startswith("jax_flash") for x in selected)
  peers = [Peer("cudnn", "cudnn", nn_attn("cudnn")), _fa3_peer(),
           *(_flash_peers(on_gpu) if flash else []), _pallas_peer(),
           Peer("xla", "xla", nn_attn("xla"))]
  peers = [p for p in peers if p.family in selected or p.name in selected]
  for p in peers:
    if p.unavailable:
      print(f"note: skipping {p.name}: {p.unavailable}")
  return peers


@contextlib.contextmanager
def forced_arch(arch: int | None):
  """Force one jax_flash kernel path while a peer is traced, compiled and timed, through
  the test-only jax_flash._cuda.force_arch(80 | 90) context. It is read at trace time
  (an attribute of the custom call), and every peer here traces fresh functions."""
  if arch is None:
    yield
    return
  from jax_flash import _cuda
  with _cuda.force_arch(arch):
    yield


# -- timing -------------------------------------------------------------------------


def fwd_flops(b: int, n: int, t: int, h: int, causal: bool) -> float:
  return 4.0 * b * n * t * t * h / (2 if causal else 1)


def time_per_call(fn, args, warmup=WARMUP, repeats=REPEATS, calls=CALLS):
  """Median seconds per call (protocol above) and the last call's output."""
  (sec, out), = time_alternating([(fn, args)], warmup, repeats, calls)
  return sec, out


def time_settled(fn, args, settle_s=0.3, repeats=REPEATS, calls=CALLS):
  """time_per_call after running fn back to back for settle_s seconds: the GPU's clock then
  reflects fn's own load, whatever ran before (clocks fall under power-heavy work and recover
  under light work with a lag of tens of ms: a 0.28 ms call timed right after 33 ms of dense
  attention ran 17% slower than alone, H100, tests/cuda/sm90_notes.md)."""
  start = time.perf_counter()
  while True:
    out = None
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    if time.perf_counter() - start >= settle_s:
      break
  return time_per_call(fn, args, 0, repeats, calls)


def time_alternating(runs, warmup=WARMUP, repeats=REPEATS, calls=CALLS):
  """time_per_call of several (fn, args) at once, their repeats taken in turn, so that clock
  drift over minutes hits them alike. (A light call then always runs right after heavy ones,
  at the clock they left: see time_settled.) Returns [(median seconds, last output)]."""
  outs = [None] * len(runs)
  for i, (fn, args) in enumerate(runs):
    for _ in range(warmup):
      outs[i] = jax.block_until_ready(fn(*args))
  times = [[] for _ in runs]
  for _ in range(repeats):
    for i, (fn, args) in enumerate(runs):
      start = time.perf_counter()
      for _ in range(calls):
        outs[i] = fn(*args)
      jax.block_until_ready(outs[i])
      times[i].append((time.perf_counter() - start) / calls)
  return [(statistics.median(t), out) for t, out in zip(times, outs)]


def failure_reason(e: Exception) -> str:
  text = f"{type(e).__name__}: {e}"
  if any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")):
    return "OOM"
  return " ".join(text.split())[:300]


# After these the CUDA context is unusable: every later call would fail too.
STICKY_ERRORS = ("ILLEGAL_ADDRESS", "illegal memory access", "unspecified launch failure",
                 "LAUNCH_FAILED", "misaligned address", "ILLEGAL_INSTRUCTION")


def record_failure(rec, direction, e, failed):
  rec[f"{direction}_error"] = reason = failure_reason(e)
  failed[(rec["peer"], rec["head_dim"], rec["causal"], direction)] = (rec["seqlen"], reason)
  if any(s in reason for s in STICKY_ERRORS):
    raise RuntimeError(f"{rec['peer']} broke the CUDA context ({reason}); stopping") from e


def run_point(peers, point, dtype, directions, failed, records):
  """Appends one record per peer at one (head_dim, causal, seqlen) point to records.

  failed maps (peer, head_dim, causal, direction) -> (seqlen, reason) of an earlier
  failure; such a peer is not retried at this longer seqlen.
  """
  h, causal, t, b, n = (point[k] for k in ("head_dim", "causal", "seqlen", "batch", "heads"))
  keys = jax.random.split(jax.random.key(1000 * t + 2 * h + causal), 4)
  q, k, v, dout = (jax.random.normal(key, (b, t, n, h), dtype) for key in keys)
  flops = fwd_flops(b, n, t, h, causal)
  outputs, first = {}, len(records)
  for peer in peers:
    rec = dict(peer=peer.name, **point, fwd_ms=None, fwdbwd_ms=None, bwd_ms=None,
               fwd_tflops=None, bwd_tflops=None, fwd_error=None, bwd_error=None,
               rel_err=None)
    records.append(rec)
    for d in ("fwd", "bwd"):
      earlier = failed.get((peer.name, h, causal, d))
      if peer.unavailable:
        rec[f"{d}_error"] = f"skipped: {peer.unavailable}"
      elif peer.head_dims and h not in peer.head_dims:
        rec[f"{d}_error"] = f"skipped: no kernel for head dim {h}"
      elif earlier:
        rec[f"{d}_error"] = f"skipped: failed at seqlen {earlier[0]} ({earlier[1]})"
    if rec["fwd_error"]:  # skipped; so is the backward, which needs the forward time
      rec["bwd_error"] = rec["bwd_error"] or rec["fwd_error"]
      continue
    with forced_arch(peer.arch):
      outputs[peer.name] = measure(peer, causal, (q, k, v, dout), flops, rec,
                                   "bwd" in directions and not rec["bwd_error"], failed)
  _check_outputs(records[first:], {p: o for p, o in outputs.items() if o is not None})


SETTLE_S = 0.3  # --settle-s


def time_point(fn, args):
  """Seconds per call and the last output: warm-ups (compile), settling, 5 x 10 calls."""
  for _ in range(WARMUP):
    jax.block_until_ready(fn(*args))
  return time_settled(fn, args, SETTLE_S)


def measure(peer, causal, args, flops, rec, with_bwd, failed):
  """Times the forward (and fwd+bwd) into rec; returns the forward output or None."""
  attn = lambda q, k, v: peer.fn(q, k, v, causal)

  def fwd_bwd(q, k, v, dout):
    out, vjp = jax.vjp(attn, q, k, v)
    return out, vjp(dout)

  try:
    sec, out = time_point(jax.jit(attn), args[:3])
    rec["fwd_ms"], rec["fwd_tflops"] = sec * 1e3, flops / sec / 1e12
  except Exception as e:
    record_failure(rec, "fwd", e, failed)
    rec["bwd_error"] = rec["fwd_error"]  # no forward time to subtract
    return None
  if with_bwd:
    try:
      sec, _ = time_point(jax.jit(fwd_bwd), args)
      rec["fwdbwd_ms"] = sec * 1e3
      rec["bwd_ms"] = rec["fwdbwd_ms"] - rec["fwd_ms"]
      if rec["bwd_ms"] > 0:
        rec["bwd_tflops"] = 2.5 * flops / rec["bwd_ms"] / 1e9
      else:
        rec["bwd_error"] = "fwd+bwd not slower than fwd (timing noise)"
    except Exception as e:
      record_failure(rec, "bwd", e, failed)
  return out


def _check_outputs(records, outputs):
  """rel_err of each forward output against a trusted peer's (jax.nn xla, else cuDNN)."""
  ref_name = next((p for p in ("xla", "cudnn") if p in outputs), None)
  if ref_name is None:
    return
  for rec in records:
    if rec["peer"] in outputs and rec["peer"] != ref_name:
      rec["rel_err"] = float(_rel_err(outputs[rec["peer"]], outputs[ref_name]))
      rec["rel_err_ref"] = ref_name


@jax.jit
def _rel_err(x, ref):
  x, ref = x.astype(jnp.float32), ref.astype(jnp.float32)
  return jnp.max(jnp.abs(x - ref)) / jnp.max(jnp.abs(ref))


# -- peak memory --------------------------------------------------------------------


def memory_point(peer_name: str, seqlen: int, dtype, smoke: bool) -> dict:
  """Runs in a fresh process (the allocator's peak cannot be reset): fwd+bwd once."""
  cfg = MEMORY_SMOKE if smoke else MEMORY
  on_gpu = jax.default_backend() == "gpu"
  peer = next(p for p in _flash_peers(on_gpu) if p.name == peer_name)
  shape = (1, seqlen, cfg["heads"], cfg["head_dim"])
  keys = jax.random.split(jax.random.key(0), 4)
  args = [jax.block_until_ready(jax.random.normal(key, shape, dtype)) for key in keys]
  dev = jax.devices()[0]
  before = (dev.memory_stats() or {}).get("bytes_in_use")

  def fwd_bwd(q, k, v, do):
    out, vjp = jax.vjp(lambda *x: peer.fn(*x, False), q, k, v)
    return out, vjp(do)

  with forced_arch(peer.arch):
    compiled = jax.jit(fwd_bwd).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
  analysis = compiled.memory_analysis()
  compiled_bytes = None if analysis is None else (
      analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  peak = (dev.memory_stats() or {}).get("peak_bytes_in_use")
  return dict(peer=peer_name, seqlen=seqlen, shape=list(shape), peak_bytes_in_use=peak,
              inputs_bytes_in_use=before, compiled_bytes=compiled_bytes,
              compiled_temp_bytes=None if analysis is None else analysis.temp_size_in_bytes)


def memory_mode(args, meta):
  cfg = MEMORY_SMOKE if args.smoke else MEMORY
  rows = []
  for peer in _flash_peers(meta["backend"] == "gpu"):
    for seqlen in cfg["seqlens"]:
      cmd = [sys.executable, os.path.abspath(__file__), "--memory-point",
             f"{peer.name}:{seqlen}", "--dtype", args.dtype] + (["--smoke"] if args.smoke else [])
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
      found = [l for l in proc.stdout.splitlines() if l.startswith("MEMORY_RESULT ")]
      if found:
        rows.append(json.loads(found[-1].split(" ", 1)[1]))
      else:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        rows.append(dict(peer=peer.name, seqlen=seqlen,
                         error=("OOM" if "RESOURCE_EXHAUSTED" in tail else tail[-300:])))
  mib = lambda x: "n/a" if x is None else f"{x / 2**20:,.0f}"
  print(f"\nPeak memory of fwd+bwd, {meta['device']}, {args.dtype}, batch 1, "
        f"{cfg['heads']} heads, head dim {cfg['head_dim']} (MiB):")
  print(f"{'peer':>16} {'seqlen':>7} {'peak_in_use':>12} {'inputs':>8} {'compiled':>9} "
        f"{'temp':>8}  growth vs shortest (peak, seqlen)")
  base = {}
  for r in rows:
    if "error" in r:
      print(f"{r['peer']:>16} {r['seqlen']:>7}  failed: {r['error']}")
      continue
    b = base.setdefault(r["peer"], r)
    peak_key = "peak_bytes_in_use" if r["peak_bytes_in_use"] else "compiled_bytes"
    growth = (f"{r[peak_key] / b[peak_key]:.2f}x ({peak_key}), {r['seqlen'] / b['seqlen']:.0f}x"
              if r[peak_key] and b[peak_key] else "-")
    print(f"{r['peer']:>16} {r['seqlen']:>7} {mib(r['peak_bytes_in_use']):>12} "
          f"{mib(r['inputs_bytes_in_use']):>8} {mib(r['compiled_bytes']):>9} "
          f"{mib(r['compiled_temp_bytes']):>8}  {growth}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "memory.json"), "w") as f:
    json.dump(dict(meta=meta, results=rows), f, indent=1)


# -- main ---------------------------------------------------------------------------


def _ints(text):
  return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny shapes for a CPU check")
  p.add_argument("--seqlens", type=_ints, help="e.g. 512,1024 (default: the protocol's)")
  p.add_argument("--head-dims", type=_ints, help="e.g. 64,128 (default: 64,128,256)")
  p.add_argument("--causal", choices=("0", "1", "both"), default="both")
  p.add_argument("--peers", default=",".join(FAMILIES),
                 help=f"families {FAMILIES} or column names such as jax_flash_sm80")
  p.add_argument("--directions", default="fwd,bwd")
  p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
  p.add_argument("--out", default="bench_out")
  p.add_argument("--settle-s", type=float, default=None,
                 help=f"seconds each function runs before its timing (default {SETTLE_S}; "
                      "0 with --smoke)")
  p.add_argument("--budget-s", type=float, default=math.inf,
                 help="start no new point after this many seconds (device time limits)")
  p.add_argument("--memory", action="store_true", help="peak memory of fwd+bwd instead")
  p.add_argument("--memory-point", help=argparse.SUPPRESS)  # internal: PEER:SEQLEN
  args = p.parse_args(argv)
  args.directions = [d for d in args.directions.split(",") if d]
  if not args.directions or set(args.directions) - {"fwd", "bwd"}:
    p.error(f"--directions must be a comma list of fwd, bwd; got {args.directions}")
  args.peers = [x for x in args.peers.split(",") if x]
  return args


def main(argv=None):
  args = parse_args(argv)
  dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float16
  if args.memory_point:
    name, seqlen = args.memory_point.rsplit(":", 1)
    print("MEMORY_RESULT " + json.dumps(memory_point(name, int(seqlen), dtype, args.smoke)))
    return
  grid = SMOKE if args.smoke else FULL
  global SETTLE_S
  SETTLE_S = args.settle_s if args.settle_s is not None else (0.0 if args.smoke else SETTLE_S)
  meta = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(),
              jax=jax.__version__, dtype=args.dtype, tokens=grid["tokens"],
              hidden=grid["hidden"], command=" ".join(sys.argv),
              date=time.strftime("%Y-%m-%d %H:%M:%S"),
              protocol=f"{WARMUP} warm-ups, {SETTLE_S} s back to back, median of {REPEATS} x "
                       f"{CALLS} enqueued calls")
  print(f"device: {meta['device']} ({meta['backend']}), jax {meta['jax']}")
  if args.memory:
    memory_mode(args, meta)
    return
  from tqdm import tqdm

  from plot_benchmark import render_table, write_outputs  # beside this file

  peers = make_peers(args.peers, meta["backend"] == "gpu")
  causals = {"0": (False,), "1": (True,), "both": (False, True)}[args.causal]
  points = [dict(head_dim=h, causal=c, seqlen=t, batch=grid["tokens"] // t,
                 heads=grid["hidden"] // h)
            for h in args.head_dims or grid["head_dims"] for c in causals
            for t in args.seqlens or grid["seqlens"]]
  bad = [p for p in points if p["batch"] < 1 or p["heads"] < 1]
  if bad:
    raise ValueError(f"seqlen must be <= {grid['tokens']} tokens and head dim <= hidden "
                     f"{grid['hidden']}; got {bad[0]}")
  records, failed, start = [], {}, time.perf_counter()
  try:
    for point in (bar := tqdm(points, unit="point")):
      if time.perf_counter() - start > args.budget_s:
        print(f"\nstopping: the {args.budget_s:.0f} s budget is spent", file=sys.stderr)
        break
      bar.set_postfix_str(f"hdim {point['head_dim']} causal {int(point['causal'])} "
                          f"seqlen {point['seqlen']}")
      run_point(peers, point, dtype, args.directions, failed, records)
      # Rewritten after every point: a run killed by a time limit keeps what it measured.
      write_outputs(meta, records, args.out, with_plot=False)
  finally:
    meta["elapsed_s"] = round(time.perf_counter() - start, 1)
    if records:
      write_outputs(meta, records, args.out)
      print(render_table(meta, records))
      print(f"\n{len({(r['head_dim'], r['causal'], r['seqlen']) for r in records})} of "
            f"{len(points)} points in {meta['elapsed_s']} s; wrote results.json, results.csv "
            f"and results.png to {args.out}/")


if __name__ == "__main__":
  main()
