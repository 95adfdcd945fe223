"""Table, CSV and plot of examples/benchmark.py results; also re-renders saved runs.

  python examples/plot_benchmark.py bench_out/results.json [more/results.json ...] --out DIR

prints the table (TFLOP/s fwd / bwd per peer, then each jax_flash column's ratios to
cuDNN and to the best of cuDNN and FA3) and writes DIR/results.{json,csv,png}. Ratios are
taken only between numbers of the same point of the same run (BENCHMARKS.md: only
same-run ratios mean anything on a shared GPU); merging runs only puts them side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

# Forward outputs further than this from the reference peer's (max |diff| / max |ref|)
# are flagged: bf16 rounding alone gives about 0.4%; a masking bug gives O(1).
REL_ERR_FLAG = 0.05
PEER_COLORS = dict(jax_flash="C3", jax_flash_sm90="C3", jax_flash_sm80="C1", cudnn="C0",
                   fa3="C2", pallas="C4", xla="C7")


def _cell(rec, d):
  if rec is None:
    return "-"
  value = rec[f"{d}_tflops"]
  if value is not None:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
  err = rec[f"{d}_error"]
  if err is None:
    return "-"
  return "OOM" if err == "OOM" else "skip" if err.startswith("skipped") else "fail"


def _ratio(a, b):
  return f"{a / b:.2f}" if a is not None and b is not None else "-"


def _best(*values):
  values = [x for x in values if x is not None]
  return max(values) if values else None


def _format(head, rows):
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  fmt = lambda cells: "  ".join(x.rjust(w) for x, w in zip(cells, widths))
  return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def render_table(meta, records) -> str:
  """TFLOP/s fwd / bwd per peer; then each jax_flash column's ratios to cuDNN and to
  the best of (cuDNN, FA3), taken at the same point of the same run."""
  peers = list(dict.fromkeys(r["peer"] for r in records))
  flash = [p for p in peers if p.startswith("jax_flash")]
  by_point = {}
  for r in records:
    by_point.setdefault((r["head_dim"], r["causal"], r["seqlen"]), {})[r["peer"]] = r
  points = sorted(by_point)
  key_cols = lambda h, c, t: [str(h), str(int(c)), str(t)]
  speed = [key_cols(*pt) + [f"{_cell(by_point[pt].get(p), 'fwd')} / "
                            f"{_cell(by_point[pt].get(p), 'bwd')}" for p in peers]
           for pt in points]
  lines = [f"{meta['device']} ({meta['backend']}), {meta['dtype']}, {meta['tokens']} tokens "
           f"per batch, hidden {meta['hidden']}", "", "TFLOP/s, fwd / bwd:"]
  lines += _format(["hdim", "causal", "seqlen"] + peers, speed)
  if flash:
    ratios = []
    for pt in points:
      recs, row = by_point[pt], key_cols(*pt)
      get = lambda p, d: recs[p][f"{d}_tflops"] if p in recs else None
      for f in flash:
        row.append(" / ".join(_ratio(get(f, d), get("cudnn", d)) for d in ("fwd", "bwd")))
        row.append(" / ".join(_ratio(get(f, d), _best(get("cudnn", d), get("fa3", d)))
                              for d in ("fwd", "bwd")))
      ratios.append(row)
    head = ["hdim", "causal", "seqlen"]
    head += [f"{f.removeprefix('jax_flash_')} / {ref}" for f in flash for ref in ("cudnn", "best")]
    lines += ["", "jax_flash / peer, fwd / bwd (best = the faster of cudnn and fa3 there):"]
    lines += _format(head, ratios)
  reasons = {}
  for r in records:
    for d in ("fwd", "bwd"):
      err = r[f"{d}_error"]
      if err and not err.startswith("skipped"):
        pts = reasons.setdefault((r["peer"], err), {})
        pts.setdefault(f"{r['head_dim']}/{int(r['causal'])}/{r['seqlen']}", []).append(d)
  if reasons:
    lines.append("\nFailures (hdim/causal/seqlen; a peer is not retried at longer seqlens):")
    for (peer, err), pts in reasons.items():
      where = ", ".join(f"{pt} {'+'.join(ds)}" for pt, ds in pts.items())
      lines.append(f"  {peer} at {where}: {err}")
  for r in records:
    if (r.get("rel_err") or 0) > REL_ERR_FLAG:
      lines.append(f"WARNING: {r['peer']} fwd output differs from {r['rel_err_ref']}'s by "
                   f"{r['rel_err']:.3f} of its max at {r['head_dim']}/{int(r['causal'])}/"
                   f"{r['seqlen']}")
  return "\n".join(lines)


def plot(meta, records, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  head_dims = sorted({r["head_dim"] for r in records})
  causals = sorted({r["causal"] for r in records})
  peers = list(dict.fromkeys(r["peer"] for r in records))
  rows = [(d, c) for d in ("fwd", "bwd") for c in causals]
  fig, axes = plt.subplots(len(rows), len(head_dims), squeeze=False,
                           figsize=(4.2 * len(head_dims), 3.2 * len(rows)))
  styles = {p: dict(marker="os^vDP*X"[i % 8], color=PEER_COLORS.get(p, f"C{i}"),
                   linewidth=2.2 if p.startswith("jax_flash") else 1.3)
            for i, p in enumerate(peers)}
  for (d, c), ax_row in zip(rows, axes):
    for h, ax in zip(head_dims, ax_row):
      for p in peers:
        pts = sorted((r["seqlen"], r[f"{d}_tflops"]) for r in records if r["peer"] == p
                     and r["head_dim"] == h and r["causal"] == c and r[f"{d}_tflops"])
        if pts:
          ax.plot(*zip(*pts), label=p, **styles[p])
      ax.set_xscale("log", base=2)
      seqlens = sorted({r["seqlen"] for r in records})
      ax.set_xticks(seqlens, [f"{s // 1024}k" if s >= 1024 else str(s) for s in seqlens])
      ax.set_ylim(bottom=0)
      ax.grid(alpha=0.3)
      ax.set_title(f"{d}, head dim {h}, {'causal' if c else 'non-causal'}", fontsize=10)
      ax.set_xlabel("seqlen")
      ax.set_ylabel("TFLOP/s")
  handles = {l: hd for ax in axes.flat for hd, l in zip(*ax.get_legend_handles_labels())}
  handles = {p: handles[p] for p in peers if p in handles}
  height = fig.get_figheight()
  fig.suptitle(f"{meta['device']}, {meta['dtype']}, {meta['tokens']} tokens per batch, "
               f"hidden {meta['hidden']}: TFLOP/s", y=1 - 0.1 / height)
  fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles),
             bbox_to_anchor=(0.5, 1 - 0.4 / height), frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def write_outputs(meta, records, out_dir, with_plot=True):
  """results.json, results.csv and results.png (the table is printed, and --from-json
  prints it again: the device returns at most 8 files a command)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(dict(meta=meta, results=records), f, indent=1)
  fields = list(dict.fromkeys(k for r in records for k in r))
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(records)
  if with_plot:
    plot(meta, records, os.path.join(out_dir, "results.png"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("results", nargs="+", help="results.json files written by benchmark.py")
  p.add_argument("--out", required=True, help="folder for the merged results.{json,csv,png}")
  args = p.parse_args(argv)
  loaded = []
  for path in args.results:
    with open(path) as f:
      loaded.append(json.load(f))
  devices = {x["meta"]["device"] for x in loaded}
  if len(devices) != 1:
    p.error(f"results come from different devices {sorted(devices)}: compare only runs of "
            "one machine")
  meta = dict(loaded[0]["meta"], sources=args.results)
  records = [r for x in loaded for r in x["results"]]
  write_outputs(meta, records, args.out)
  print(render_table(meta, records))


if __name__ == "__main__":
  main()
