"""Picks the fastest correct backward variant per head dim from `bwd_check variants` output.

  python3 tests/cuda/bwd_pick.py variants.txt   ->  a table, then "V64 V128" (variant bits)

A variant counts only if its CHECKCFG line reports 0 failing cases and it has a time at
every (seqlen, causal) point; its score is the geometric mean of its TFLOP/s over them.
Falls back to variant 0 (the portable config) for a head dim with no such variant.
"""

import math
import re
import sys
from collections import defaultdict

TIME = re.compile(r"TIME h(\d+) var(\d+) +hdim +\d+ seqlen +(\d+) (\w+) +[\d.]+ ms +([\d.]+) TFLOP/s")
CHECK = re.compile(r"CHECKCFG h(\d+) var(\d+) bf16 hdim \d+: (\d+) failing")


def main(path):
  times, fails = defaultdict(dict), {}
  for line in open(path, errors="replace"):
    if m := TIME.search(line):
      hdim, var, seqlen, causal, tflops = m.groups()
      times[(int(hdim), int(var))][(int(seqlen), causal)] = float(tflops)
    elif m := CHECK.search(line):
      fails[(int(m[1]), int(m[2]))] = int(m[3])
  points = set().union(*(t.keys() for t in times.values())) if times else set()
  best = {}
  for (hdim, var), t in sorted(times.items()):
    ok = fails.get((hdim, var)) == 0 and set(t) == points
    score = math.exp(sum(math.log(x) for x in t.values()) / len(t)) if ok else 0.0
    cells = " ".join(f"{t.get(p, 0):6.1f}" for p in sorted(points))
    print(f"h{hdim} var{var} (TMA dQ {var & 1}, late exp {var >> 1 & 1}, rotate {var >> 2 & 1}): "
          f"{cells}  geomean {score:6.1f}{'' if ok else '  (not eligible)'}")
    if ok and score > best.get(hdim, (0.0, 0))[0]:
      best[hdim] = (score, var)
  print("points:", " ".join(f"{s}/{c}" for s, c in sorted(points)))
  print(best.get(64, (0, 0))[1], best.get(128, (0, 0))[1])


if __name__ == "__main__":
  main(sys.argv[1])
