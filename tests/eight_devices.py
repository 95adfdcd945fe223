"""Eight CPU devices for the multi-device tests (test_sharding.py, test_ring.py).

Import this before anything starts JAX's backends: it asks for 8 CPU devices. When another
test module already started them (the whole suite runs in one process), `rerun_module`
runs the calling module again in a fresh process, where everything must pass.
"""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

try:
  jax.config.update("jax_num_cpu_devices", 8)
except RuntimeError:  # backends already started with fewer devices: see rerun_module
  pass

TOL = 1e-5  # sharded vs unsharded float32, relative to the largest |value|

HAVE_8 = jax.default_backend() == "cpu" and jax.device_count() >= 8


def require():
  """Skip a test in a process without the 8 devices (rerun_module runs it elsewhere)."""
  if not HAVE_8:
    pytest.skip("JAX started without 8 CPU devices; test_module_in_subprocess runs this")


def rerun_module(test_file: str):
  """The body of each module's `test_module_in_subprocess`."""
  if HAVE_8:
    pytest.skip("8 CPU devices in this process: the tests ran here")
  assert "JAX_FLASH_TEST_CHILD" not in os.environ, "no 8 CPU devices even in a fresh process"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_FLASH_TEST_CHILD="1",
             PYTHONPATH=os.pathsep.join(sys.path))
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         test_file], env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  # Only the rerun test may skip there: everything else must really have run.
  assert re.search(r"\d+ passed, 1 skipped", proc.stdout), proc.stdout[-2000:]


def rel_err(got, want):
  """max |got - want| / max |want| over finite entries; inf/NaN patterns must agree."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  finite = np.isfinite(want)
  assert np.array_equal(finite, np.isfinite(got)), "inf/NaN pattern differs"
  assert np.array_equal(got[~finite], want[~finite]), "-inf/NaN pattern differs"
  got, want = got[finite], want[finite]
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def assert_close(got, want, tol=TOL):
  """Every leaf of `got` equals `want`'s to `tol` (max error over max |want|)."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape
    assert rel_err(g, w) <= tol, rel_err(g, w)
