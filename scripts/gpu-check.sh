#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a rented H100/H200 (Ubuntu 24.04,
# CUDA 13.0, no network): a Release build for sm_90, all tests, the benchmark
# harness (scripts/bench.sh: kernels against the copy roofline, training steps
# by bits, batch and graph/eager, PyTorch beside both), compute-sanitizer
# memcheck, racecheck and initcheck on the GPU tests, and the 8-epoch LeNet-5
# accuracy protocol at fp32, 8, 4 and 2 bits.
#
# Every step runs even after one fails; each writes its full output to
# $OUT/<step>.log and prints its tail only on failure. The benchmark targets,
# the accuracy table and a step summary come last; the exit status is 1 if any
# step failed.
#
# Environment:
#   OUT             logs, and the benchmark results in $OUT/bench (default build-gpu/out)
#   STEPS           steps to run, space separated (default: all of
#                   configure build gpu ctest bench memcheck racecheck initcheck train)
#   STEP_TIMEOUT    seconds per step (default 300); BUILD_TIMEOUT for the build (900)
#   BENCH_MIN_TIME  seconds of timed calls per kernel benchmark (default 0.05)
#   DATA            Fashion-MNIST directory (default data/fashion-mnist; the
#                   GPU machine has no datasets: before the run, here,
#                   `mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/`
#                   and pass carry=["data"])
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD=build-gpu
OUT="${OUT:-$BUILD/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PATH="$PATH:/usr/local/cuda/bin"

DATA="${DATA:-data/fashion-mnist}"
# Tests that train on Fashion-MNIST read it from here.
[ -d "$DATA" ] && export LOWBIT_DATA_DIR="$(cd "$DATA" && pwd)"
STEPS="${STEPS:-configure build gpu ctest bench memcheck racecheck initcheck train}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-900}"
BENCH_MIN_TIME="${BENCH_MIN_TIME:-0.05}"
TESTS="$BUILD/tests/lowbit_tests"
# The 2^31-element test and whole training runs are left out of the sanitizer
# runs: they would take hours there.
GPU_TESTS='Gpu*:*Gpu*:-GpuLargeTensor.*:GpuTrainer.*'

names=()
statuses=()
durations=()
failed=0

# run_step NAME LIMIT COMMAND...: runs COMMAND under `timeout LIMIT` if NAME
# is in $STEPS, and records its status and seconds.
# A name's group is the part before its first "_" (train_w4a4 is in train).
run_step() {
  local name=$1 limit=$2
  shift 2
  [[ " $STEPS " == *" ${name%%_*} "* ]] || return 0
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
run_step bench "$STEP_TIMEOUT" scripts/bench.sh --no-build --build-dir "$BUILD" \
  --out "$OUT/bench" --min-time "$BENCH_MIN_TIME"
sanitize memcheck --leak-check full
sanitize racecheck
sanitize initcheck
# The accuracy protocol of DESIGN.md §4: 8 epochs at fp32 and at 8, 4 and 2
# bits. The dataset comes in $DATA (copy /usr/share/datasets/fashion-mnist
# into the git-ignored data/ and carry it).
LOWBIT="$BUILD/host/lowbit"
for bits in 0 8 4 2; do
  run_step "train_w${bits}a${bits}" "$STEP_TIMEOUT" "$LOWBIT" train --data "$DATA" --device cuda \
    --weight-bits "$bits" --act-bits "$bits" --metrics-json "$OUT/protocol_${bits}bit.json"
done
python3 - "$OUT" <<'PY' || echo "(could not read the training metrics)"
import json, os, sys

out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None

print("\ntraining protocol (8 epochs, batch 128):")
print(f"{'bits':<6} {'test acc':>9} {'img/s':>10}")
for bits in (0, 8, 4, 2):
    m = load(f"protocol_{bits}bit.json")
    label = "fp32" if bits == 0 else f"{bits}-bit"
    if m is None:
        print(f"{label:<6} {'failed':>9}")
        continue
    print(f"{label:<6} {100 * m['test_accuracy']:8.2f}% {m['train_images_per_second']:10.0f}")
PY

# The benchmark targets and training table (the rest is in $OUT/bench/results.md).
if [ -f "$OUT/bench/results.md" ]; then
  echo
  sed -n '/^## DESIGN/,/^## Kernels at/p;/^## LeNet-5 training step/,/^## Where/p' \
    "$OUT/bench/results.md" | grep -v '^## Kernels at\|^## Where'
fi

echo
printf '%-10s | %-24s | %7s\n' step status seconds
printf '%-10s-+-%-24s-+-%7s\n' ---------- ------------------------ -------
for i in "${!names[@]}"; do
  printf '%-10s | %-24s | %7s\n' "${names[$i]}" "${statuses[$i]}" "${durations[$i]}"
done
echo "logs: $OUT"
exit "$failed"
