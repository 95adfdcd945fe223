#!/bin/bash
# One device call for the backward through JAX: builds the COMMITTED tree (out/bwd/src.tar,
# made here with `git archive`, so other engineers' uncommitted edits in the shared checkout
# stay out), runs the GPU tests of the extras on the sm80 forward family (whose lse and out
# the backward consumes; the sm90 family is tested by its owner) and the backward benchmark.
#   here:   git archive -o out/bwd/src.tar HEAD
#   device: run(command="bash tests/cuda/bwd_gpu.sh", carry=["out/bwd", ".whl"])
# Environment: STEPS (default "test bench"), HEAD_DIMS (default "64;128;256"), PYTEST_K
# (default: every arch-80 case), BENCH_ARGS.
# Logs: $OUT/log.txt (everything), build.log, bench/.
set -o pipefail
REPO=$PWD
OUT=${OUT:-/tmp/bwd_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
STEPS=${STEPS:-test bench}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cutlass*.whl &&
  export PYTHONPATH=/tmp/site || exit 1

SRC=/tmp/bwd_src
rm -rf "$SRC" && mkdir -p "$SRC" && tar -xf out/bwd/src.tar -C "$SRC" || exit 1
(cd "$SRC" && JAX_FLASH_HEAD_DIMS=${HEAD_DIMS:-64;128;256} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  python3 -m pip install -q --no-build-isolation --no-deps --no-compile --target /tmp/pkg \
  -C build-dir=/tmp/bwd_build . > "$OUT/build.log" 2>&1) || { tail -40 "$OUT/build.log"; exit 1; }
echo "package built at ${SECONDS}s"
export PYTHONPATH=/tmp/pkg:/tmp/site

if [[ " $STEPS " == *" test "* ]]; then
  (cd /tmp && timeout 300 python3 -m pytest -c "$SRC/pyproject.toml" --rootdir "$SRC" \
     -p no:cacheprovider -q -ra -m gpu "$SRC/tests/test_gpu_extras.py" \
     -k "${PYTEST_K:-not 90}" 2>&1 | tail -40)
  echo "tests done at ${SECONDS}s"
fi
if [[ " $STEPS " == *" bench "* ]]; then
  (cd /tmp && timeout 200 python3 "$SRC/examples/benchmark.py" \
     ${BENCH_ARGS:---peers jax_flash_sm80,cudnn --head-dims 128 --seqlens 2048,4096,8192,16384 --directions fwd,bwd --budget-s 150} \
     --out "$OUT/bench" 2>&1 | grep -vE "it/s\]|s/point\]")
  echo "bench done at ${SECONDS}s"
fi
