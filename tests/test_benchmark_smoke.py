"""examples/benchmark.py end to end on CPU: `--smoke`, `--memory --smoke`, and
examples/plot_benchmark.py re-rendering a saved run.

Runs the script as a user would (a subprocess with a time limit) and checks what it
wrote: every point of the peers that can run on CPU has a positive time, the peers that
cannot (cuDNN, Pallas Triton) are recorded with a reason instead of stopping the run,
jax_flash's forward output agrees with jax.nn's, and the "xla" path's fwd+bwd memory
grows far slower than the square of the sequence length.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmark.py"
PLOT_SCRIPT = ROOT / "examples" / "plot_benchmark.py"
TIMEOUT_S = 120  # the smoke run takes ~15 s on an idle 2-core machine


def _run(*args, script=SCRIPT):
  # The script imports the jax_flash this process would (installed, else the source tree).
  spec = importlib.util.find_spec("jax_flash")
  where = pathlib.Path(spec.origin).parents[1] if spec and spec.origin else ROOT
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  stdout = _run("--smoke", "--out", str(out))
  return out, stdout, json.loads((out / "results.json").read_text())


def _load_module():
  spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_smoke_measures_cpu_peers(smoke):
  _, stdout, data = smoke
  meta, results = data["meta"], data["results"]
  assert meta["device"] and meta["device"] in stdout
  points = {(r["head_dim"], r["causal"], r["seqlen"]) for r in results}
  assert len(points) == 4
  for peer in ("jax_flash", "xla"):
    mine = [r for r in results if r["peer"] == peer]
    assert len(mine) == len(points)
    for r in mine:
      assert r["fwd_error"] is None and r["bwd_error"] is None, r
      for key in ("fwd_ms", "fwdbwd_ms", "bwd_ms", "fwd_tflops", "bwd_tflops"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r)
      flops = 4 * r["batch"] * r["heads"] * r["seqlen"] ** 2 * r["head_dim"]
      flops /= 2 if r["causal"] else 1
      assert r["fwd_tflops"] == pytest.approx(flops / r["fwd_ms"] / 1e9)
      assert r["bwd_tflops"] == pytest.approx(2.5 * flops / r["bwd_ms"] / 1e9)
  for r in results:
    if r["peer"] == "jax_flash":
      assert r["rel_err_ref"] == "xla" and r["rel_err"] < 0.02, r


def test_smoke_records_failures_instead_of_crashing(smoke):
  _, stdout, data = smoke
  for peer in ("cudnn", "pallas"):
    mine = [r for r in data["results"] if r["peer"] == peer]
    assert mine and all(r["fwd_tflops"] is None and r["fwd_error"] for r in mine)
  assert "Failures" in stdout


def test_smoke_writes_csv_png(smoke):
  out, stdout, data = smoke
  rows = list(csv.DictReader((out / "results.csv").open()))
  assert len(rows) == len(data["results"])
  assert {r["peer"] for r in rows} == {r["peer"] for r in data["results"]}
  png = (out / "results.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 20_000


def _table(stdout):
  return stdout[stdout.index("TFLOP/s, fwd / bwd"):].split("\n\n")[0]


def test_from_json_rerenders_the_same_table(smoke, tmp_path):
  out, stdout, _ = smoke
  again = _run(str(out / "results.json"), "--out", str(tmp_path), script=PLOT_SCRIPT)
  assert "jax_flash" in _table(stdout) and _table(again) == _table(stdout)
  assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_fwd_flops_formula():
  bench = _load_module()
  assert bench.fwd_flops(2, 3, 5, 7, causal=False) == 4 * 2 * 3 * 5 * 5 * 7
  assert bench.fwd_flops(2, 3, 5, 7, causal=True) == 2 * 2 * 3 * 5 * 5 * 7


def test_memory_smoke_grows_subquadratically(tmp_path):
  stdout = _run("--memory", "--smoke", "--out", str(tmp_path))
  rows = json.loads((tmp_path / "memory.json").read_text())["results"]
  assert "Peak memory" in stdout
  assert [r["seqlen"] for r in rows] == [1024, 4096] and all("error" not in r for r in rows)
  small, large = (r["compiled_bytes"] for r in rows)
  assert 0 < small < large
  # 4x the sequence: a T x S buffer would grow 16x; the blockwise path stays near 4x.
  assert large / small < 6


def test_mask_benchmark_smoke_counts_visible_pairs(tmp_path):
  """examples/mask_benchmark.py on CPU: every case runs, and the visible-pair counts its
  FLOPs rest on match a dense count of the reference's visibility matrix."""
  import numpy as np

  from reference import visible_mask

  stdout = _run("--smoke", "--out", str(tmp_path), script=ROOT / "examples" / "mask_benchmark.py")
  result = json.loads((tmp_path / "mask_benchmark.json").read_text())
  rows = {r["case"]: r for r in result["rows"]}
  t = result["t"]
  assert "TFLOP/s over visible pairs" in stdout
  assert all(r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in rows.values())
  ids = np.repeat(np.arange(4), t // 4)[None]
  dense = {
      "dense": visible_mask(1, 1, t, t),
      "dense_causal": visible_mask(1, 1, t, t, is_causal=True),
      "window_32": visible_mask(1, 1, t, t, is_causal=True, local_window_size=(32, 0)),
      "docs_4x64": visible_mask(1, 1, t, t, q_segment_ids=ids, kv_segment_ids=ids),
      "docs_4x64_c": visible_mask(1, 1, t, t, is_causal=True, q_segment_ids=ids,
                                  kv_segment_ids=ids),
      "lengths_half": visible_mask(1, 1, t, t, query_seq_lengths=[t // 2],
                                   key_value_seq_lengths=[t // 2]),
  }
  for name, vis in dense.items():
    assert rows[name]["visible_pairs"] == vis.sum(), name
