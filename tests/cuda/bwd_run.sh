#!/bin/bash
# Device-side driver for tests/cuda/bwd_check.cu: uses the binary built here in out/
# (carried), or builds it on the device if that binary cannot run there.
# usage: tests/cuda/bwd_run.sh [check|time|quick|all] [sanitize] [peers] [ncu]
set -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/bwd_out}; mkdir -p "$OUT"
BIN=out/bwd_check
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader
if ! $BIN none >/dev/null 2>&1; then
  python3 -c 'import cutlass_library' 2>/dev/null || {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cutlass*.whl
    export PYTHONPATH=/tmp/site; }
  CUTLASS=$(python3 -c 'import cutlass_library, os; print(os.path.dirname(cutlass_library.__file__))')/source/include
  echo "building on device (carried binary did not run)"
  nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -gencode arch=compute_90,code=sm_90 \
    -I csrc -I "$CUTLASS" tests/cuda/bwd_check.cu -o /tmp/bwd_check || exit 1
  BIN=/tmp/bwd_check
fi
mode=${1:-all}
if [ "$mode" = all ] || [ "$mode" = check ] || [ "$mode" = quick ]; then
  [ "$mode" = quick ] && cmode=quick || cmode=check
  $BIN $cmode 2>&1 | tee "$OUT/check.txt"
fi
if [ "$mode" = all ] || [ "$mode" = time ]; then
  $BIN time 2>&1 | tee "$OUT/time.txt"
fi
if [[ " $* " == *" peers "* ]]; then
  PYTHONUNBUFFERED=1 timeout 150 python3 tests/cuda/bwd_peers.py 2>&1 | grep -v Warning | tee "$OUT/peers.txt"
fi
if [[ " $* " == *" ncu "* ]]; then
  # Profiles one launch each of hdim 128 and hdim 64 (16k tokens, seqlen 16k, non-causal).
  sections="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats
    --section Occupancy --section LaunchStats --section InstructionStats"
  timeout 150 ncu --kernel-name regex:bwd_kernel --launch-count 2 $sections -o /tmp/bwd_prof -f \
    $BIN profile > "$OUT/ncu_log.txt" 2>&1
  ncu -i /tmp/bwd_prof.ncu-rep --page details > "$OUT/ncu.txt" 2>&1
  ncu -i /tmp/bwd_prof.ncu-rep --page raw > "$OUT/ncu_raw.txt" 2>&1
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Warp Cycles Per Issued|Issue Slots Busy|Bank" "$OUT/ncu.txt" | head -20
fi
if [[ " $* " == *" sanitize "* ]]; then
  timeout 60 compute-sanitizer --tool racecheck $BIN quick 2>&1 | tail -15 | tee "$OUT/race.txt"
  if grep -q "CUDA error" "$OUT/check.txt" 2>/dev/null; then
    timeout 120 compute-sanitizer --tool memcheck $BIN quick 2>&1 | head -40 | tee "$OUT/memcheck.txt"
  fi
fi
