#!/bin/bash
# One device call for backward tuning: the driver's checks and the timings of every variant
# (tests/cuda/bwd_pick.py tabulates them and names the fastest correct one per head dim),
# then the end-to-end benchmark of the package as configured (jax_flash sm80 path vs cuDNN)
# in the same run, so driver and JAX numbers compare. The 2026-11-21 run (bwd_notes.md)
# built the package with the winners, which are now the defaults in bwd_traits.h.
#   here:   nvcc ... tests/cuda/bwd_check.cu -o out/bwd/bwd_check   (see bwd_check.cu)
#   device: run(command="bash tests/cuda/bwd_e2e.sh", carry=["out/bwd", ".whl"], timeout_s=300)
# Logs: $OUT/log.txt (everything), check.txt, variants.txt, bench/results.{json,csv,png}.
set -o pipefail
REPO=$PWD
OUT=${OUT:-/tmp/bwd_e2e}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
LIMIT_S=${LIMIT_S:-280}  # the call's limit, less a margin for writing results
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cutlass*.whl &&
  export PYTHONPATH=/tmp/site || exit 1

# The package (default configs) builds while the GPU runs the driver.
JAX_FLASH_HEAD_DIMS=64,128 JAX_FLASH_DTYPES=bf16 CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install -q --no-build-isolation --no-deps --no-compile --target /tmp/pkg \
  -C build-dir=/tmp/build . > /tmp/build.log 2>&1 &
builder=$!

BIN=out/bwd/bwd_check
$BIN check > "$OUT/check.txt" 2>&1
echo "driver check: rc $? at ${SECONDS}s"; grep -E "FAIL|CHECK" "$OUT/check.txt"
# Variant bits: 1 TMA dQ, 2 late exponentials, 4 rotated start (bwd_check.cu); one process
# each, so a crash or hang costs only its own numbers.
for h in 64 128; do
  for bits in 0 1 2 3 4 5 6 7; do
    timeout 40 $BIN variant $h $bits >> "$OUT/variants.txt" 2>&1 || echo "h$h var$bits: rc $?"
  done
done
echo "driver variants done at ${SECONDS}s"; grep -E "FAIL|CHECKCFG" "$OUT/variants.txt"
python3 tests/cuda/bwd_pick.py "$OUT/variants.txt"
wait $builder || { echo "package build failed"; tail -30 /tmp/build.log; exit 1; }
echo "package built at ${SECONDS}s"

budget=$((LIMIT_S - SECONDS - 25))
echo "benchmark, budget ${budget}s"
cd /tmp && PYTHONPATH="/tmp/pkg:/tmp/site" timeout $((budget + 20)) \
  python3 "$REPO/examples/benchmark.py" --peers jax_flash_sm80,cudnn --head-dims 64,128 \
  --seqlens 2048,4096,8192,16384 --directions fwd,bwd --out "$OUT/bench" --budget-s "$budget" \
  2>&1 | grep -vE "it/s\]|s/point\]"
echo "done at ${SECONDS}s"
