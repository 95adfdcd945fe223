#!/bin/bash
# Device-side check of the three-consumer-warpgroup forward at hdim 64 (issue 4; variants named
# "192x128" in tests/cuda/sm90_fwd_check.cu) in one call of under 10 minutes:
#   1. check: every variant (the shipped defaults too: the 3-warpgroup change touched code they
#      share) on every case, the extras cases on the defaults and the 192x128 variants, each
#      case twice with a bitwise comparison; a hang stops the script;
#   2. bench: the hdim-64 bf16 variants (128x128 = the shipped 2-warpgroup kernel, 192x128 the
#      3-warpgroup ones) at the BENCHMARKS.md shapes, seqlen 512..16k, causal and not, same run;
#   3. maskbench: the same variants on windows, documents, lengths, softcap, bias;
#   4. compute-sanitizer memcheck of the small cases on the bf16 3-warpgroup kernel (extras
#      cases included).
# Uses out/sm90/sm90_fwd_check built here by tests/cuda/sm90_build.sh and carried, or rebuilds it
# on the device when it is missing, cannot run or is stale (as tests/cuda/sm90_run.sh).
# usage: tests/cuda/sm90_3wg_run.sh   (logs under $OUT: check3, bench3, ratio3, maskbench3, memcheck3;
#        run it with run(timeout_s=600), see tests/cuda/sm90_notes.md)
set -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sm90_out}; mkdir -p "$OUT"
BIN=out/sm90/sm90_fwd_check
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader
bash tests/cuda/sm90_build.sh --if-stale || exit 1
$BIN list | grep 192x

timeout 300 $BIN check > "$OUT/check3.txt" 2>&1; echo "check exit $?" >> "$OUT/check3.txt"
if grep -q "^HANG" "$OUT/check3.txt"; then  # a hung pipeline would hang every timing too
  grep -E "^(FAIL|HANG)|passed" "$OUT/check3.txt"; tail -3 "$OUT/check3.txt"; exit 3
fi
timeout 90 $BIN bench "bf16 h64" > "$OUT/bench3.txt" 2>&1; echo "bench exit $?" >> "$OUT/bench3.txt"
timeout 60 $BIN maskbench "bf16 h64" > "$OUT/maskbench3.txt" 2>&1
echo "maskbench exit $?" >> "$OUT/maskbench3.txt"
if [ $SECONDS -lt 500 ]; then
  timeout $((580 - SECONDS)) compute-sanitizer --tool memcheck $BIN quick "bf16 h64 192x128 s3 pp" \
    2>&1 | tail -6 > "$OUT/memcheck3.txt"
fi

# The reply shows only the last 12,000 characters: the long tables first, then what decides
# (check totals, the 2 -> 3 warpgroup ratios, memcheck); every log also comes back under $OUT.
echo "== bench"; grep -v "^device" "$OUT/bench3.txt"
echo "== maskbench"; grep -v "^device" "$OUT/maskbench3.txt"
echo "== check (full log: check3.txt)"
grep -E "^(FAIL|HANG)|passed|exit|error|rror" "$OUT/check3.txt" | head -40
echo "192x128 cases passed: $(grep -c '^PASS .*192x128' "$OUT/check3.txt")," \
  "failed: $(grep -c '^FAIL .*192x128' "$OUT/check3.txt")"
echo "== bench ratios"
# TFLOP/s of each variant over the shipped 2-warpgroup hdim-64 kernel, same run, default order
# (bench lines: <variant name, with spaces> causal seqlen order ms TFLOP/s).
awk '
NF >= 6 && $(NF - 2) == "default" {
  name = $1; for (i = 2; i <= NF - 5; ++i) name = name " " $i
  key = $(NF - 4) " " $(NF - 3)
  tf[name, key] = $NF
  if (!(name in seen)) { seen[name] = 1; names[++n] = name }
  if (!(key in kseen)) { kseen[key] = 1; keys[++m] = key }
}
END {
  base = "bf16 h64 128x128 s3 pp q2 so"
  printf "%-30s", "ratio to " base " (causal seqlen):"
  for (j = 1; j <= m; ++j) printf " %s", keys[j]; printf "\n"
  for (i = 1; i <= n; ++i) {
    if (names[i] == base) continue
    printf "%-30s", names[i]
    for (j = 1; j <= m; ++j) {
      b = tf[base, keys[j]]; v = tf[names[i], keys[j]]
      if (b > 0 && v > 0) printf " %.2f", v / b; else printf " -"
    }
    printf "\n"
  }
}
' "$OUT/bench3.txt" | tee "$OUT/ratio3.txt"
echo "== memcheck"; cat "$OUT/memcheck3.txt" 2>/dev/null
echo "total ${SECONDS}s"
