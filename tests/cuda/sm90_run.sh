#!/bin/bash
# Device-side driver for the sm90 forward kernel: correctness, timings, peers, memcheck, in one
# call that fits a 300 s limit. Uses out/sm90/sm90_fwd_check built by tests/cuda/sm90_build.sh
# and carried, or rebuilds it on the device when it is missing, cannot run or is stale.
# Peers: cuDNN through JAX, and FlashAttention-3 from .whl/flash_attn3_jax-*.whl when carried.
# usage: tests/cuda/sm90_run.sh            (logs under $OUT: check, bench, peers, memcheck)
#        SM90_PEERS=0 tests/cuda/sm90_run.sh  (without the peers)
set -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sm90_out}; mkdir -p "$OUT"
BIN=out/sm90/sm90_fwd_check
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader
bash tests/cuda/sm90_build.sh --if-stale || exit 1

timeout 150 $BIN check > "$OUT/check.txt" 2>&1; echo "check exit $?" >> "$OUT/check.txt"
if grep -q "^HANG" "$OUT/check.txt"; then  # a hung pipeline would hang every timing too
  grep -E "^(FAIL|HANG)|passed" "$OUT/check.txt"; tail -3 "$OUT/check.txt"; exit 3
fi
timeout 60 $BIN bench > "$OUT/bench.txt" 2>&1; echo "bench exit $?" >> "$OUT/bench.txt"
timeout 60 $BIN maskbench > "$OUT/maskbench.txt" 2>&1; echo "maskbench exit $?" >> "$OUT/maskbench.txt"
if ls .whl/flash_attn3_jax-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa3 .whl/flash_attn3_jax-*.whl \
    && export PYTHONPATH=/tmp/fa3${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${SM90_PEERS:-1}" = 1 ] && [ $SECONDS -lt 230 ]; then
  PYTHONUNBUFFERED=1 timeout $((300 - SECONDS)) python3 tests/cuda/sm90_peers.py 2>&1 \
    | grep -v -i warning > "$OUT/peers.txt"
fi
if [ $SECONDS -lt 300 ]; then
  timeout $((330 - SECONDS)) compute-sanitizer --tool memcheck $BIN quick "bf16 h128" 2>&1 \
    | tail -8 > "$OUT/memcheck.txt"
fi

# The reply shows only the tail: failures and totals, then the tables.
echo "== check (full log: check.txt)"
grep -E "^(FAIL|HANG)|passed|exit|error|rror" "$OUT/check.txt" | head -40
echo "== bench"; cat "$OUT/bench.txt"
echo "== maskbench"; cat "$OUT/maskbench.txt"
echo "== peers"; cat "$OUT/peers.txt" 2>/dev/null
echo "== memcheck"; cat "$OUT/memcheck.txt" 2>/dev/null
echo "total ${SECONDS}s"
