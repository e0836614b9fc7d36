#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a rented H100/H200 (Ubuntu 24.04,
# CUDA 13.0, no network): a Release build for sm_90, all tests, the kernel
# benchmarks at n = 2^26 against a device copy, and compute-sanitizer
# memcheck, racecheck and initcheck on the GPU tests.
#
# Every step runs even after one fails; each writes its full output to
# $OUT/<step>.log and prints its tail only on failure. A table of the 2^26
# benchmarks and a step summary come last; the exit status is 1 if any step
# failed.
#
# Environment:
#   OUT             logs and bench_kernels.json (default build-gpu/out)
#   STEPS           steps to run, space separated (default: all of
#                   configure build gpu ctest bench memcheck racecheck initcheck train)
#   STEP_TIMEOUT    seconds per step (default 300); BUILD_TIMEOUT for the build (900)
#   BENCH_MIN_TIME  seconds of timed calls per benchmark (default 0.25)
#   TRAIN_ARGS      arguments of the training run (see the train step)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD=build-gpu
OUT="${OUT:-$BUILD/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PATH="$PATH:/usr/local/cuda/bin"

STEPS="${STEPS:-configure build gpu ctest bench memcheck racecheck initcheck train}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-900}"
BENCH_MIN_TIME="${BENCH_MIN_TIME:-0.25}"
TESTS="$BUILD/tests/lowbit_tests"
BENCH="$BUILD/bench/lowbit_bench_kernels"
# The 2^31-element test is left out of the sanitizer runs: it would take hours there.
GPU_TESTS='Gpu*:*Gpu*:-GpuLargeTensor.*'
BENCH_JSON="$OUT/bench_kernels.json"

names=()
statuses=()
durations=()
failed=0

# run_step NAME LIMIT COMMAND...: runs COMMAND under `timeout LIMIT` if NAME
# is in $STEPS, and records its status and seconds.
run_step() {
  local name=$1 limit=$2
  shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  local log="$OUT/$name.log" start=$SECONDS rc=0 status=pass
  echo "== $name: $*"
  timeout --kill-after=30 "$limit" "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 124 ]; then
    status="FAIL (timeout ${limit}s)"
  elif [ "$rc" -ne 0 ]; then
    status="FAIL (exit $rc)"
  fi
  if [ "$rc" -ne 0 ]; then
    failed=1
    tail -n 25 "$log" | sed 's/^/   | /'
  elif [ "$name" = gpu ]; then
    sed 's/^/   /' "$log"
  fi
  names+=("$name")
  statuses+=("$status")
  durations+=("$((SECONDS - start))")
}

# compute-sanitizer returns the tests' status unless told otherwise; report
# its own findings as exit 99. A failing CUDA API call is the tests' business
# (the code checks every call), so only memory, race and init findings count.
sanitize() {
  local tool=$1
  shift
  run_step "$tool" "$STEP_TIMEOUT" compute-sanitizer --tool "$tool" --error-exitcode 99 \
    --report-api-errors no "$@" "$TESTS" --gtest_filter="$GPU_TESTS"
}

run_step configure "$STEP_TIMEOUT" cmake -S . -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_BUILD_TYPE=Release
run_step build "$BUILD_TIMEOUT" cmake --build "$BUILD" -j "$(nproc)"
run_step gpu 60 nvidia-smi \
  --query-gpu=name,driver_version,memory.total,temperature.gpu,power.draw,power.limit,clocks.sm,clocks.max.sm,pstate \
  --format=csv
run_step ctest "$STEP_TIMEOUT" ctest --test-dir "$BUILD" --output-on-failure \
  --output-junit "$OUT/ctest-junit.xml"
# The copies are in the filter: pct_of_copy divides by the copy of this run.
rm -f "$BENCH_JSON"
run_step bench "$STEP_TIMEOUT" "$BENCH" --benchmark_filter='/n:67108864/' \
  --benchmark_min_time="$BENCH_MIN_TIME" --benchmark_out="$BENCH_JSON" \
  --benchmark_out_format=json
sanitize memcheck --leak-check full
sanitize racecheck
sanitize initcheck
# The training run (issue 3) joins once the lowbit CLI is built.
if [ -x "$BUILD/host/lowbit" ]; then
  read -r -a train_args <<<"${TRAIN_ARGS:-train --device auto --metrics-json $OUT/train_metrics.json}"
  run_step train "$STEP_TIMEOUT" "$BUILD/host/lowbit" "${train_args[@]}"
fi

if [ -f "$BENCH_JSON" ]; then
  python3 - "$BENCH_JSON" <<'PY' || echo "(could not read $BENCH_JSON)"
import json, re, sys

data = json.load(open(sys.argv[1]))
ctx = data["context"]
runs = [b for b in data["benchmarks"] if "/n:67108864/" in b["name"]]
# With --benchmark_repetitions, show the medians.
if any(b.get("aggregate_name") == "median" for b in runs):
    runs = [b for b in runs if b.get("aggregate_name") == "median"]
else:
    runs = [b for b in runs if b.get("run_type") == "iteration"]
print(f"\nkernels at n = 2^26 on {ctx.get('gpu', '?')} "
      f"(driver {ctx.get('cuda_driver', '?')}, runtime {ctx.get('cuda_runtime', '?')})")
print(f"{'op':<44} {'time us':>9} {'B/elem':>7} {'GB/s':>8} {'% copy':>7}")
for b in runs:
    op = re.sub(r"^(gpu|cpu)/|/n:67108864/.*$", "", b["name"])
    if b.get("error_occurred"):
        print(f"{op:<44} error: {b.get('error_message', '')}")
        continue
    pct = b.get("pct_of_copy")
    pct_text = f"{pct:7.1f}" if pct is not None else f"{'-':>7}"
    print(f"{op:<44} {b['real_time']:9.1f} {b['bytes_per_elem']:7.3f} {b['GB/s']:8.1f} {pct_text}")
PY
fi

echo
printf '%-10s | %-24s | %7s\n' step status seconds
printf '%-10s-+-%-24s-+-%7s\n' ---------- ------------------------ -------
for i in "${!names[@]}"; do
  printf '%-10s | %-24s | %7s\n' "${names[$i]}" "${statuses[$i]}" "${durations[$i]}"
done
echo "logs: $OUT"
exit "$failed"
