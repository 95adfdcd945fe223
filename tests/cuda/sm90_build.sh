#!/bin/bash
# Builds out/sm90/sm90_fwd_check (and records the hash of the sources it was built from, so that
# a carried binary that is stale gets rebuilt on the device instead of run).
# usage: tests/cuda/sm90_build.sh [cutlass include dir]   (default: the nvidia-cutlass wheel's)
#        tests/cuda/sm90_build.sh --if-stale   (on the device: only when the binary is missing,
#                                              cannot run there, or was built from other sources;
#                                              installs the carried cutlass wheel if needed)
set -e
cd "$(dirname "$0")/../.."
src_sha() {
  cat csrc/params.h csrc/common/mask.h csrc/common/util.cuh csrc/sm90/* tests/cuda/chunk_ranges.h \
    tests/cuda/sm90_fwd_check.cu | sha1sum | cut -d' ' -f1
}
if [ "$1" = "--if-stale" ]; then
  if out/sm90/sm90_fwd_check list >/dev/null 2>&1 && [ "$(src_sha)" = "$(cat out/sm90/src.sha1 2>/dev/null)" ]; then
    exit 0
  fi
  python3 -c 'import cutlass_library' 2>/dev/null || {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cutlass*.whl
    export PYTHONPATH=/tmp/site; }
  echo "building on the device (carried binary missing, not runnable here, or stale)"
  shift
fi
CUTLASS=${1:-$(python3 -c 'import cutlass_library, os; print(os.path.dirname(cutlass_library.__file__))' 2>/dev/null || true)/source/include}
[ -d "$CUTLASS" ] || CUTLASS=/work/venv/lib/python3.11/site-packages/cutlass_library/source/include
mkdir -p out/sm90
nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr \
  -gencode=arch=compute_90a,code=sm_90a -I csrc -I "$CUTLASS" tests/cuda/sm90_fwd_check.cu \
  -o out/sm90/sm90_fwd_check
src_sha > out/sm90/src.sha1
