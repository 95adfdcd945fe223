"""Test markers: `gpu` (registered in pyproject.toml; each GPU test module skips itself with
the reason when the kernels cannot run) and `slow`, skipped unless --run-slow is given."""

import pytest


def pytest_addoption(parser):
  parser.addoption("--run-slow", action="store_true", default=False,
                   help="also run tests marked slow (e.g. the seqlen-131072 GPU test)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--run-slow"):
    return
  skip = pytest.mark.skip(reason="slow: pass --run-slow to run it")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
