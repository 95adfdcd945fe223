"""Test markers: `gpu` (registered in pyproject.toml; each GPU test module skips itself with
the reason when the kernels cannot run); `slow`, skipped unless --run-slow is given; `bigmem`,
skipped in pytest-xdist workers: such a test needs most of the GPU's memory, which the other
workers hold part of (an H100 ran out at -n 8), so .ci/gpu.sh runs them alone afterwards."""

import os

import pytest


def pytest_addoption(parser):
  parser.addoption("--run-slow", action="store_true", default=False,
                   help="also run tests marked slow (e.g. the seqlen-131072 GPU test)")


def pytest_collection_modifyitems(config, items):
  skip_slow = pytest.mark.skip(reason="slow: pass --run-slow to run it")
  skip_bigmem = pytest.mark.skip(
      reason="bigmem: needs most of the GPU's memory; run it without -n (pytest-xdist)")
  in_worker = "PYTEST_XDIST_WORKER" in os.environ
  for item in items:
    if "slow" in item.keywords and not config.getoption("--run-slow"):
      item.add_marker(skip_slow)
    if "bigmem" in item.keywords and in_worker:
      item.add_marker(skip_bigmem)
