#!/bin/bash
# Builds out/sm90/sm90_fwd_check (and records the hash of the sources it was built from, so that
# tests/cuda/sm90_run.sh rebuilds on the device instead of running a stale carried binary).
# usage: tests/cuda/sm90_build.sh [cutlass include dir]   (default: the nvidia-cutlass wheel's)
set -e
cd "$(dirname "$0")/../.."
CUTLASS=${1:-$(python3 -c 'import cutlass_library, os; print(os.path.dirname(cutlass_library.__file__))' 2>/dev/null || true)/source/include}
[ -d "$CUTLASS" ] || CUTLASS=/work/venv/lib/python3.11/site-packages/cutlass_library/source/include
mkdir -p out/sm90
nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr \
  -gencode=arch=compute_90a,code=sm_90a -I csrc -I "$CUTLASS" tests/cuda/sm90_fwd_check.cu \
  -o out/sm90/sm90_fwd_check
cat csrc/params.h csrc/common/mask.h csrc/common/util.cuh csrc/sm90/* tests/cuda/sm90_fwd_check.cu \
  | sha1sum | cut -d' ' -f1 > out/sm90/src.sha1
