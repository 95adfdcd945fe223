"""Two processes on localhost join with `jax.distributed` (CPU, 4 devices each) and run
`examples/multihost.py`: batch x sequence sharding over all 8 devices, ring attention
across the process boundary. The gathered output and gradients must equal the same call
in this one process. Loopback only; every wait is bounded."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import jax_flash

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multihost.py"
TIMEOUT = 240  # seconds for both processes together (about 10 s on a 2-core machine)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  saved = tmp_path / "out.npz"
  common = ["--num-processes", "2", "--cpu-devices", "4", "--causal", "--timeout", "60",
            "--coordinator", f"127.0.0.1:{free_port()}", "--seed", "3", "--batch", "4",
            "--seqlen", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, str(EXAMPLE), "--process-id", str(i), *common]
                            + (["--save", str(saved)] if i == 0 else []),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  reports = [json.loads(line) for log in logs for line in log.splitlines()
             if line.startswith("{")]
  assert [r["process"] for r in reports] == [0, 1] and reports[0]["devices"] == 8

  # The same inputs (the example draws them in this order) on one device here.
  rng = np.random.default_rng(3)
  q, k, v, dout = (rng.standard_normal(s).astype(np.float32)
                   for s in [(4, 64, 4, 16), (4, 64, 2, 16), (4, 64, 2, 16), (4, 64, 4, 16)])
  f = lambda q, k, v: jax_flash.attention(q, k, v, is_causal=True)
  out, vjp = jax.vjp(f, q, k, v)
  want = (out, *vjp(dout))
  got = np.load(saved)
  for name, w in zip(("out", "dq", "dk", "dv"), want):
    w = np.asarray(w)
    assert np.abs(got[name] - w).max() <= 1e-5 * np.abs(w).max(), name
