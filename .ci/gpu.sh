#!/usr/bin/env bash
# The one script sent to the GPU machine: build, GPU tests, sanitizers, benchmark.
#
#   .ci/gpu.sh [STEP...]      from the repository root; default: build test sanitize slow
#
# Steps:
#   build     pip install --no-build-isolation --no-deps -v . (ptxas -v on; build.log)
#   test      pytest -m gpu tests/test_gpu_kernels.py tests/test_gpu_extras.py (not slow), then
#             the bigmem tests alone (without PYTEST_ARGS)
#   slow      the seqlen-131072 fwd+bwd test (pytest --run-slow -m slow)
#   sanitize  compute-sanitizer memcheck and racecheck on tiny fwd+bwd calls
#   cpu       the whole pytest suite (the CPU tests, here on the GPU machine)
#   bench     python examples/benchmark.py --out $OUT/bench $BENCH_ARGS
#   maskbench python examples/mask_benchmark.py --out $OUT/maskbench
# Environment: OUT (logs; default ./out), PYTEST_ARGS (extra pytest arguments, e.g. -k),
# BENCH_ARGS, JAX_FLASH_* build settings (see CMakeLists.txt), STEP_TIMEOUT_S (default 600).
# nvidia-cutlass is installed from .whl/ (carry it) when Python cannot import it.
# Writes $OUT/gpu.log (everything), build.log, sanitize_{memcheck,racecheck}.log; prints a
# summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build test sanitize slow)
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-600}
declare -A RESULT SECONDS_TAKEN

exec > >(tee -a "$OUT/gpu.log") 2>&1

echo "== $(date -u +%FT%TZ) steps: ${STEPS[*]}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 --version; nvcc --version | tail -1

if ! python3 -c "import cutlass_library" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .whl/nvidia_cutlass*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# pytest from outside the checkout, so `import jax_flash` finds the installed package
# (with its extension) rather than the source tree. XLA's autotuner is off: it times every
# reference matmul and fusion the tests compile, on a GPU shared by the pytest workers
# (H200, 102 tests: autotuning on, -n 8, 354 s; on, -n 12, out of its 420 s with workers
# killed, most likely by the 90-s per-test limit; off, -n 8, 29 s, all passed).
run_pytest() {
  (cd /tmp && XLA_FLAGS="--xla_gpu_autotune_level=0 ${XLA_FLAGS:-}" python3 -m pytest \
     -c "$REPO/pyproject.toml" --rootdir "$REPO" -p no:cacheprovider -ra "$@" ${PYTEST_ARGS:-})
}

step_build() {
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install --no-build-isolation --no-deps \
    -v . -C cmake.define.JAX_FLASH_PTXAS_VERBOSE=ON > "$OUT/build.log" 2>&1
  local rc=$?
  grep -iE "warning|error" "$OUT/build.log" | grep -v "^ *-- " | sort | uniq -c | head -20
  # One line per kernel and architecture from ptxas -v: registers, stack, spills, smem.
  python3 - "$OUT/build.log" <<'PY'
import re, subprocess, sys
rows, name = {}, None
for line in open(sys.argv[1], errors="replace"):
  m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'", line)
  if m:
    name = m.groups()
    rows[name] = {}
    continue
  m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
  if name and m:
    rows[name]["spill"] = "/".join(m.groups())
  m = re.search(r"Used (\d+) registers", line)
  if name and m:
    rows[name]["regs"] = m.group(1)
    smem = re.search(r"(\d+) bytes smem", line)
    rows[name]["smem"] = smem.group(1) if smem else "0"
names = sorted({n for n, _ in rows})
demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                           text=True).stdout.splitlines()
short = dict(zip(names, demangled)) if len(demangled) == len(names) else {}
print("arch   regs  stack/spill-st/spill-ld  static-smem  kernel")
for (n, arch), r in sorted(rows.items()):
  print(f"{arch:6} {r.get('regs', '?'):>4}  {r.get('spill', '?'):>22}  {r.get('smem', '?'):>11}"
        f"  {short.get(n, n)[:150]}")
PY
  (cd /tmp && python3 -c "
import jax, jax_flash, jax_flash._cuda as c
print('jax', jax.__version__, jax.devices()); print('jax_flash from', jax_flash.__file__)
print('built archs', c._ext.built_archs(), 'head dims', c._ext.built_head_dims(),
      'dtypes', c._ext.built_dtypes(), 'kernels_available:', c.kernels_available())")
  return $rc
}

# A kernel that hangs stalls the whole process; pytest-timeout (where installed) then dumps
# every thread's stack, which names the test and the call that hung, and exits.
timeout_args() {
  python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$1 --timeout-method=thread"
}

# The bigmem tests (conftest.py: most of the GPU's memory) run alone after the others, without
# PYTEST_ARGS (its -n would skip them).
step_test() {
  local files=("$REPO/tests/test_gpu_kernels.py" "$REPO/tests/test_gpu_extras.py") rc=0
  run_pytest "${files[@]}" -m "gpu and not slow and not bigmem" -v --durations=10 \
    $(timeout_args 90) || rc=1
  PYTEST_ARGS= run_pytest "${files[@]}" -m "gpu and bigmem and not slow" -v \
    $(timeout_args 300) || rc=1
  return $rc
}

step_slow() {
  run_pytest "$REPO/tests/test_gpu_kernels.py" -m slow --run-slow -v $(timeout_args 300)
}

step_cpu() {
  run_pytest -q
}

step_bench() {
  python3 examples/benchmark.py --out "$OUT/bench" ${BENCH_ARGS:-}
}

step_maskbench() {
  python3 examples/mask_benchmark.py --out "$OUT/maskbench"
}

# Tiny fwd+bwd calls under compute-sanitizer. CUDA API errors are not reported (XLA and
# its libraries probe the driver with calls that fail on purpose); the script itself
# checks our results.
step_sanitize() {
  cat > /tmp/jax_flash_sanitize.py <<'EOF'
import math
import jax, jax.numpy as jnp, numpy as np
from jax_flash import _cuda
from jax_flash._config import AttnConfig, Extras
cases = [  # dtype, (B, T, S, N, K, H), (window_left, window_right)
    (jnp.bfloat16, (1, 77, 77, 4, 2, 64), (-1, 0)),
    (jnp.float16, (2, 130, 65, 2, 1, 40), (16, 8)),
    (jnp.bfloat16, (1, 33, 190, 2, 2, 256), (-1, -1)),
    (jnp.float16, (1, 70, 20, 2, 2, 128), (4, 0)),  # rows that see no key
    (jnp.bfloat16, (2, 90, 70, 2, 1, 64), (-1, 0)),  # + every extra (below)
]
for i, (dtype, (b, t, s, n, kv, h), (wl, wr)) in enumerate(cases):
  ks = jax.random.split(jax.random.key(i), 4)
  q = jax.random.normal(ks[0], (b, t, n, h), dtype)
  k = jax.random.normal(ks[1], (b, s, kv, h), dtype)
  v = jax.random.normal(ks[2], (b, s, kv, h), dtype)
  do = jax.random.normal(ks[3], (b, t, n, h), dtype)
  cfg = AttnConfig(scale=1 / math.sqrt(h), window_left=wl, window_right=wr)
  ex = Extras()
  if i == 4:
    cfg = AttnConfig(scale=cfg.scale, window_right=0, softcap=5.0)
    seg = lambda L: jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32) // 23, (b, L))
    ex = Extras(bias=jax.random.normal(ks[0], (1, n, t, s)),
                mask=jax.random.bernoulli(ks[1], 0.8, (b, 1, t, s)),
                q_seqlen=jnp.array([t, 50], jnp.int32), kv_seqlen=jnp.array([s, 33], jnp.int32),
                q_segment_ids=seg(t), kv_segment_ids=seg(s))
  def f(q, k, v, do):
    out, lse = _cuda.fwd(q, k, v, ex, cfg)
    grads = _cuda.bwd(q, k, v, ex, out, lse, do, None, cfg)  # dbias None without a bias
    return (out, lse) + tuple(g for g in grads if g is not None)
  res = jax.block_until_ready(jax.jit(f)(q, k, v, do))
  ok = all(bool(jnp.all(jnp.isfinite(x) | jnp.isneginf(x))) for x in res)
  print(f"case {i}: all results finite or -inf: {ok}")
  assert ok
print("sanitize script done")
EOF
  # Every kernel is instrumented (a name filter that matched nothing would pass silently);
  # reports are then split by the kernel they name: ours fail the step, XLA's are shown.
  local rc=0 tool log ours
  for tool in memcheck racecheck; do
    log="$OUT/sanitize_$tool.log"
    echo "-- compute-sanitizer --tool $tool"
    XLA_PYTHON_CLIENT_PREALLOCATE=false \
    XLA_FLAGS="--xla_gpu_autotune_level=0 --xla_gpu_enable_command_buffer=" \
      compute-sanitizer --tool "$tool" --report-api-errors no --print-limit 100 \
        python3 /tmp/jax_flash_sanitize.py > "$log" 2>&1
    local trc=$?
    ours=$(grep -cE "^=========.*(at|access at) .*jax_flash::" "$log")
    grep -E "^case [0-9]|sanitize script done|(ERROR|RACECHECK) SUMMARY" "$log"
    grep -E "^=========.*(Invalid|Error|Race|Hazard|Warning|jax_flash::)" "$log" | head -20
    echo "$tool: exit $trc, $ours report lines naming jax_flash kernels"
    if [ $trc -ne 0 ] || [ "$ours" -ne 0 ] || ! grep -q "sanitize script done" "$log"; then
      rc=1
    fi
  done
  return $rc
}

overall=0
for step in "${STEPS[@]}"; do
  if ! declare -F "step_$step" > /dev/null; then
    echo "unknown step '$step'"; RESULT[$step]=unknown; overall=1; continue
  fi
  echo; echo "== step $step"
  start=$SECONDS
  # Steps run in a subshell under a time limit, so one hung step cannot eat the lease.
  export -f "step_$step" run_pytest timeout_args
  export REPO OUT
  timeout "$STEP_TIMEOUT_S" bash -c "step_$step"
  rc=$?
  SECONDS_TAKEN[$step]=$((SECONDS - start))
  RESULT[$step]=$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)")
  [ $rc -eq 0 ] || overall=1
done

echo; echo "== summary"
for step in "${STEPS[@]}"; do
  printf "%-9s %-16s %4ss\n" "$step" "${RESULT[$step]}" "${SECONDS_TAKEN[$step]:-0}"
done
exit $overall
