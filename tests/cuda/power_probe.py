"""Clock and power of jax_flash, FA3 and cuDNN forward, each run back to back for 3 s (hdim 128,
bf16, 16k tokens; seqlen 16k and 2k, non-causal and causal). nvidia-smi samples every 100 ms;
per function: TFLOP/s over its last 2 s, mean SM clock and power over the same window, and
TFLOP per joule. Session 11's numbers are in tests/cuda/sm90_notes.md.

  pip install --no-deps flash_attn3_jax-0.2.3-cp312-*.whl    # see BENCHMARKS.md
  python tests/cuda/power_probe.py
"""
import datetime, functools, subprocess, sys, time
import jax, jax.numpy as jnp
import jax_flash
from flash_attn3_jax import flash_mha

log = open("/tmp/smi.csv", "w")
smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu",
                        "--format=csv,noheader,nounits", "-lms", "100"], stdout=log)
time.sleep(1.0)
res = []
for seqlen in (16384, 2048):
  b, n, h = 16384 // seqlen, 16, 128
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (b, seqlen, n, h), jnp.bfloat16) for kk in keys)
  for causal in (False, True):
    flop = 4.0 * b * n * seqlen * seqlen * h / (2 if causal else 1)
    fns = {"jax_flash": jax.jit(functools.partial(jax_flash.attention, implementation="cuda", is_causal=causal)),
           "fa3": jax.jit(functools.partial(flash_mha, is_causal=causal)),
           "cudnn": jax.jit(functools.partial(jax.nn.dot_product_attention, implementation="cudnn", is_causal=causal))}
    for name, fn in fns.items():
      fn(q, k, v).block_until_ready()
      t0 = time.time(); marks = []
      while time.time() - t0 < 3.0:
        for _ in range(10): o = fn(q, k, v)
        o.block_until_ready(); marks.append((time.time(), 10))
      # throughput over the last 2 s
      start = t0 + 1.0
      calls = sum(c for t, c in marks if t > start)
      first = min(t for t, c in marks if t > start)
      # time from the previous mark before `first`
      prev = max([t for t, c in marks if t <= start] or [t0])
      tf = flop * calls / (marks[-1][0] - prev) / 1e12
      res.append((seqlen, causal, name, tf, prev, marks[-1][0]))
      time.sleep(0.5)
smi.terminate(); smi.wait(); log.close()
samples = []
for line in open("/tmp/smi.csv"):
  ts, pw, clk, temp = [x.strip() for x in line.split(",")]
  t = datetime.datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").timestamp()
  samples.append((t, float(pw), float(clk), float(temp)))
print(jax.devices()[0].device_kind)
print("seqlen causal peer      TFLOP/s  clock_MHz  power_W  temp  TFLOP/J")
for seqlen, causal, name, tf, a, z in res:
  s = [x for x in samples if a <= x[0] <= z]
  if not s: print(seqlen, causal, name, f"{tf:.0f}", "no samples"); continue
  pw = sum(x[1] for x in s) / len(s); clk = sum(x[2] for x in s) / len(s); tmp = max(x[3] for x in s)
  print(f"{seqlen:6d} {str(causal):6s} {name:10s} {tf:7.1f} {clk:9.0f} {pw:8.1f} {tmp:5.0f} {tf/pw:7.3f}")
