#!/bin/bash
# Device-side check of the sm90 forward as users get it, in one call: the driver's check and
# memcheck (out/sm90/sm90_fwd_check, built by tests/cuda/sm90_build.sh), then the committed tree
# (out/sm90/src.tar, from `git archive -o out/sm90/src.tar HEAD`) built as the package, the GPU
# tests that run the sm90 forward, and the numbers that count: examples/benchmark.py (forward
# against cuDNN and FlashAttention-3) and examples/mask_benchmark.py.
# usage (device, .whl and out/sm90 carried): bash tests/cuda/sm90_package.sh
# Environment: OUT (logs), SM90_HEAD_DIMS (built and benchmarked; default 128,64),
# SM90_BENCH_S (benchmark.py --budget-s; default 110).
set -o pipefail
OUT=${OUT:-/tmp/sm90_package}; mkdir -p "$OUT"
HEAD_DIMS=${SM90_HEAD_DIMS:-128,64}

timeout 120 out/sm90/sm90_fwd_check check > "$OUT/check.txt" 2>&1
echo "driver check exit $?"; grep -E "^(FAIL|HANG)|passed" "$OUT/check.txt" | head -20
timeout 60 compute-sanitizer --tool memcheck out/sm90/sm90_fwd_check quick "bf16 h128" 2>&1 \
  | tail -2

rm -rf /tmp/src && mkdir -p /tmp/src && tar -xf out/sm90/src.tar -C /tmp/src \
  && cp -r .whl /tmp/src/ || exit 1
cd /tmp/src || exit 1
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_FLASH_DTYPES=bf16
export JAX_FLASH_HEAD_DIMS=${HEAD_DIMS//,/;}
OUT=$OUT/ci bash .ci/gpu.sh build | tail -12
# The sm90 forward runs in every forward test on Hopper; these select the ones that name it
# (the "90" family of the extras tests, both forward paths) and the determinism / coverage ones.
(cd /tmp && timeout 200 python3 -m pytest -c /tmp/src/pyproject.toml --rootdir /tmp/src \
  -p no:cacheprovider -q -n 8 -m "gpu and not slow" -k "90 or bitwise or every_output" \
  /tmp/src/tests/test_gpu_kernels.py /tmp/src/tests/test_gpu_extras.py 2>&1 | tail -8)

python3 -m pip install -q --no-index --no-deps --target /tmp/site2 .whl/flash_attn3_jax*.whl
PYTHONPATH=/tmp/site2${PYTHONPATH:+:$PYTHONPATH} timeout 240 python3 examples/benchmark.py \
  --peers jax_flash_sm90,cudnn,fa3 --head-dims "$HEAD_DIMS" --directions fwd \
  --seqlens 512,1024,2048,4096,8192,16384 --out "$OUT/bench" --budget-s "${SM90_BENCH_S:-110}" \
  2>&1 | grep -v -i warning | tail -40
timeout 150 python3 examples/mask_benchmark.py --out "$OUT/mask" 2>&1 | grep -v -i warning \
  | tail -25
echo "total ${SECONDS}s"
