"""examples/train_gpt.py and examples/flax_swap.py end to end on CPU, run as a user would:
a subprocess with a time limit, against the jax_flash this test process imports."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # each run takes 10-25 s on an idle 2-core machine


def _run(script, *args, devices=1):
  spec = importlib.util.find_spec("jax_flash")
  where = pathlib.Path(spec.origin).parents[1] if spec and spec.origin else ROOT
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join(filter(None, [str(where),
                                                      os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  return proc


def _summary(proc):
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  m = re.search(r"tokens/s ([\d,]+) \| loss ([\d.]+) -> ([\d.]+).*attention (.+?) \| "
                r"device (.+?) \|", proc.stdout)
  assert m, proc.stdout
  return float(m[1].replace(",", "")), float(m[2]), float(m[3]), m[4], m[5]


def test_train_gpt_loss_falls_and_plots(tmp_path):
  out = tmp_path / "loss.png"
  proc = _run("train_gpt.py", "--steps", "60", "--out", str(out))
  tokens_per_s, first, last, attention, device = _summary(proc)
  assert tokens_per_s > 0 and "jax_flash" in attention and "cpu" in device
  assert last < 0.6 * first, (first, last)  # from ~ln(64) to near the chain's entropy
  assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
  assert "train (jax_flash)" in proc.stderr  # the tqdm bar


def test_train_gpt_mesh_matches_single_device(tmp_path):
  """data=2 x seq=2 (ring attention) trains exactly like one device."""
  args = ("--steps", "6", "--seq-len", "32", "--batch", "4", "--out", str(tmp_path / "a.png"))
  _, first_1, last_1, _, _ = _summary(_run("train_gpt.py", *args))
  _, first_4, last_4, _, device = _summary(
      _run("train_gpt.py", *args, "--mesh", "data=2,model=1,seq=2", devices=4))
  assert device.endswith("x4")
  assert abs(first_4 - first_1) < 2e-3 and abs(last_4 - last_1) < 2e-3


def test_train_gpt_bad_options_fail_clearly(tmp_path):
  proc = _run("train_gpt.py", "--mesh", "data=4", "--out", str(tmp_path / "a.png"))
  assert proc.returncode != 0 and "needs 4 devices" in proc.stderr
  proc = _run("train_gpt.py", "--attention", "cudnn", "--out", str(tmp_path / "a.png"))
  assert proc.returncode != 0 and "needs an NVIDIA GPU" in proc.stderr


def test_flax_swap_matches_flax():
  proc = _run("flax_swap.py", "--seq-len", "64", "--batch", "2", "--repeats", "1")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  out_diff = float(re.search(r"max \|output difference\| +(\S+)", proc.stdout)[1])
  grad_diff = float(re.search(r"max \|gradient difference\| +(\S+)", proc.stdout)[1])
  assert out_diff < 1e-4 and grad_diff < 1e-4, proc.stdout
  assert re.search(r"flax default [\d.]+ ms, jax_flash [\d.]+ ms", proc.stdout)
