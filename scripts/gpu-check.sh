#!/usr/bin/env bash
# Everything that needs a GPU, in four phases that each fit one call of the
# device tool (at most 10 minutes a command, 15 minutes of device time per
# issue, a machine start costs 1-2 of them). Each phase stops its steps at
# PHASE_BUDGET seconds (default 450), so it ends within 8 minutes.
#
#   phase 1  configure and build for sm_90 (Release), the card and versions,
#            every test (ctest)
#   phase 2  the 8-epoch LeNet-5 accuracy protocol at fp32, 8, 4 and 2 bits,
#            then the benchmarks beside PyTorch (scripts/bench.sh)
#   phase 3  compute-sanitizer memcheck, racecheck and initcheck on the GPU
#            tests, trimmed to fit: without GpuLargeTensor.* (2^31 elements)
#            and GpuTrainer.* (whole trainings), which would take hours there
#   phase 4  the PyTorch operators against the GPU's CUDA-enabled torch: build
#            lowbit_torch and the CLI (build-gpu-torch/), their CPU tests
#            there (with the run against lowbit train), the CUDA path
#            against the CPU path (tests/torch/test_cuda.py), and the
#            torch-ops benchmark suite on the GPU (torch_ops.md)
#
# Each phase builds first (a no-op on the warm machine that ran the phase
# before, which keeps build-gpu/). The tests run with LOWBIT_EXPECT_GPU=1, so
# a test that would skip for want of a GPU or of the dataset fails, and with
# CUDA_MODULE_LOADING=EAGER, so no kernel loads inside a graph capture.
#
# The calls, one right after the other so the machine stays warm. First,
# here, copy the dataset into the git-ignored data/ (the GPU machine has none):
#   mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/
#   run(command="scripts/gpu-check.sh 1", carry=["data"], timeout_s=540)
#   run(command="scripts/gpu-check.sh 2", carry=["data"], timeout_s=540)
#   run(command="scripts/gpu-check.sh 3", carry=["data"], timeout_s=540)
#   run(command="scripts/gpu-check.sh 4", carry=["data"], timeout_s=540)
#   give_back()
#
# Output: the summary table last on stdout, and under $OUT (at most 8 files,
# which is what the device tool brings back): phase<N>.log with every step's
# full output, summary<N>.txt, and phase 1's ctest-junit.xml or phase 2's
# protocol.json, results.md, results.json and the two charts.
# The exit status is 1 if any step failed, 2 for bad usage.
#
# Usage: scripts/gpu-check.sh PHASE      (PHASE: 1 to 4; -h, --help: this)
# Environment:
#   OUT           where the files go (default build-gpu/out)
#   DATA          Fashion-MNIST directory (default data/fashion-mnist)
#   STEPS         the phase's steps to run, space separated (default: all;
#                 phase 1: configure build gpu ctest; 2: configure build
#                 train bench; 3: configure build memcheck racecheck initcheck)
#   PHASE_BUDGET  seconds for the whole phase (default 450)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  1 | 2 | 3 | 4) phase=$1 ;;
  *) echo "gpu-check.sh: give a phase, 1 to 4 (see --help)" >&2; exit 2 ;;
esac

BUILD=build-gpu
# Phase 4 builds only lowbit_torch and the CLI, against the torch of the
# first python3 that has one, in a directory of its own so the other phases'
# build keeps its options. Both the torch folder and its CMake folder go on
# the prefix path, so torch's libraries are found before any system libtorch.
configure_args=(-DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release)
build_args=()
if [ "$phase" = 4 ]; then
  BUILD=build-gpu-torch
  TORCH_PYTHON=$(scripts/python-with.sh torch) || TORCH_PYTHON=python3
  configure_args+=(-DLOWBIT_TORCH=ON -DLOWBIT_BUILD_TESTS=OFF -DLOWBIT_BUILD_BENCH=OFF
    "-DCMAKE_PREFIX_PATH=$("$TORCH_PYTHON" -c 'import os, torch, torch.utils as u;
print(os.path.dirname(torch.__file__) + ";" + u.cmake_prefix_path)' 2>/dev/null)")
  build_args=(--target lowbit_torch lowbit_cli)
fi
OUT="${OUT:-$BUILD/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Each step's full output; $OUT gets them joined into one file.
LOGS=$(mktemp -d -t lowbit-gpu-check.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT
export PATH="$PATH:/usr/local/cuda/bin"
export LOWBIT_EXPECT_GPU=1 CUDA_MODULE_LOADING=EAGER
DATA="${DATA:-data/fashion-mnist}"
# A missing dataset is not skipped: the tests that need it fail.
[ -d "$DATA" ] && DATA="$(cd "$DATA" && pwd)"
export LOWBIT_DATA_DIR="$DATA"
case $phase in
  1) default_steps="configure build gpu ctest" ;;
  2) default_steps="configure build train bench" ;;
  3) default_steps="configure build memcheck racecheck initcheck" ;;
  4) default_steps="configure build torch" ;;
esac
STEPS="${STEPS:-$default_steps}"
PHASE_BUDGET="${PHASE_BUDGET:-450}"
TESTS="$BUILD/tests/lowbit_tests"
LOWBIT="$BUILD/host/lowbit"
SANITIZED_TESTS='Gpu*:*Gpu*:-GpuLargeTensor.*:GpuTrainer.*'

names=()
statuses=()
durations=()
failed=0

# run_step NAME LIMIT COMMAND...: runs COMMAND if NAME's group (the part
# before its first "_": train_w4a4 is in train) is in $STEPS, for at most
# LIMIT seconds and what is left of the phase's budget, and records its
# status and seconds. The full output goes to $LOGS/NAME.log.
run_step() {
  local name=$1 limit=$2
  shift 2
  [[ " $STEPS " == *" ${name%%_*} "* ]] || return 0
  local log="$LOGS/$name.log" start=$SECONDS rc=0 status=pass
  local left=$((PHASE_BUDGET - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    rc=124
    status="FAIL (phase budget spent)"
    echo "not run: the phase's ${PHASE_BUDGET}s were spent" >"$log"
  else
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      status="FAIL (timeout ${limit}s)"
    elif [ "$rc" -ne 0 ]; then
      status="FAIL (exit $rc)"
    fi
  fi
  if [ "$rc" -ne 0 ]; then
    failed=1
    tail -n 25 "$log" | sed 's/^/   | /'
  fi
  names+=("$name")
  statuses+=("$status")
  durations+=("$((SECONDS - start))")
}

# compute-sanitizer returns the tests' status unless told otherwise; its own
# findings exit 99. A failing CUDA API call is the tests' business (the code
# checks every call), so only memory, race and init findings count.
sanitize() {
  local tool=$1 limit=$2
  shift 2
  run_step "$tool" "$limit" compute-sanitizer --tool "$tool" --error-exitcode 99 \
    --report-api-errors no "$@" "$TESTS" --gtest_filter="$SANITIZED_TESTS"
}

# The phase's own lines for the summary, from its logs.
report() {
  case $phase in
    1)
      if [ -f "$LOGS/gpu.log" ]; then sed 's/^/  /' "$LOGS/gpu.log"; fi
      if [ -f "$LOGS/ctest.log" ]; then
        grep -E 'tests passed|tests failed|\(Failed\)|\(Timeout\)|\*\*\*' "$LOGS/ctest.log" |
          sed 's/^/  /' || true
      fi
      ;;
    2) protocol_table; bench_tables ;;
    3)
      for tool in memcheck racecheck initcheck; do
        [ -f "$LOGS/$tool.log" ] || continue
        echo "  $tool: $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$LOGS/$tool.log" | tail -n 1)"
        grep -h '^\[  PASSED  \]\|^\[  FAILED  \]' "$LOGS/$tool.log" | sed 's/^/    /' || true
      done
      echo "  trimmed: $SANITIZED_TESTS"
      ;;
    4)
      for log in torch_cpu torch_cuda; do
        [ -f "$LOGS/$log.log" ] || continue
        echo "  $log: $(grep -E '^(OK|FAILED)|^Ran ' "$LOGS/$log.log" | tr '\n' ' ')"
      done
      if [ -f "$LOGS/bench/torch_ops.md" ]; then
        grep '^| [a-z_]* | [a-z0-9]* | 2^' "$LOGS/bench/torch_ops.md" | sed 's/^/  /' || true
      fi
      ;;
  esac
}

protocol_table() {
  python3 - "$LOGS" "$OUT/protocol.json" <<'PY' || echo "  (could not read the training metrics)"
import json, os, sys

logs, merged_path = sys.argv[1:]
merged = {}
print("  training protocol (8 epochs, batch 128):")
print(f"  {'bits':<6} {'test acc':>9} {'img/s':>10}  device")
for bits in (0, 8, 4, 2):
    label = "fp32" if bits == 0 else f"{bits}-bit"
    path = os.path.join(logs, f"protocol_{bits}bit.json")
    if not os.path.exists(path):
        print(f"  {label:<6} {'failed':>9}")
        continue
    m = json.load(open(path))
    merged[label] = m
    print(f"  {label:<6} {100 * m['test_accuracy']:8.2f}% {m['train_images_per_second']:10.0f}"
          f"  {m['device']}")
json.dump(merged, open(merged_path, "w"), indent=1)
PY
}

bench_tables() {
  local results="$LOGS/bench/results.md"
  if [ ! -f "$results" ]; then return 0; fi
  sed -n '/^## DESIGN/,/^## Kernels at/p;/^## LeNet-5 training step/,/^## Where/p' "$results" |
    grep -v '^## Kernels at\|^## Where' | sed 's/^/  /'
}

run_step configure 60 cmake -S . -B "$BUILD" "${configure_args[@]}"
run_step build 270 cmake --build "$BUILD" -j "$(nproc)" "${build_args[@]}"
case $phase in
  1)
    # The card and driver, and the CUDA toolkit (phase 2's device column adds cuDNN).
    run_step gpu 20 bash -c 'nvidia-smi --format=csv,noheader \
      --query-gpu=name,driver_version,memory.total,clocks.max.sm && nvcc --version | tail -n 1'
    run_step ctest 180 ctest --test-dir "$BUILD" -j "$(nproc)" --output-on-failure \
      --no-tests=error --output-junit "$OUT/ctest-junit.xml"
    ;;
  2)
    # DESIGN.md §4's protocol: 8 epochs at fp32 and at 8, 4 and 2 bits.
    for bits in 0 8 4 2; do
      run_step "train_w${bits}a${bits}" 60 "$LOWBIT" train --data "$DATA" --device cuda \
        --weight-bits "$bits" --act-bits "$bits" --metrics-json "$LOGS/protocol_${bits}bit.json"
    done
    run_step bench 200 scripts/bench.sh --no-build --build-dir "$BUILD" --out "$LOGS/bench" \
      --min-time 0.02
    for file in results.md results.json kernels_roofline.png training.png; do
      if [ -f "$LOGS/bench/$file" ]; then cp "$LOGS/bench/$file" "$OUT/"; fi
    done
    ;;
  3)
    sanitize memcheck 150 --leak-check full
    sanitize racecheck 120
    sanitize initcheck 100
    ;;
  4)
    TORCH_LIBRARY="$BUILD/host/torch/liblowbit_torch.so"
    run_step torch_cpu 120 env PYTHON="$TORCH_PYTHON" tests/torch/run.sh "$TORCH_LIBRARY" "$LOWBIT"
    run_step torch_cuda 120 "$TORCH_PYTHON" tests/torch/test_cuda.py "$TORCH_LIBRARY" -v
    run_step torch_bench 150 env PYTHON="$TORCH_PYTHON" scripts/bench.sh --no-build \
      --build-dir "$BUILD" --torch-ops-only --torch-ops-device cuda --out "$LOGS/bench"
    for file in torch_ops.md torch_ops.json; do
      if [ -f "$LOGS/bench/$file" ]; then cp "$LOGS/bench/$file" "$OUT/"; fi
    done
    ;;
esac

{
  echo "gpu-check phase $phase"
  report
  echo
  printf '%-12s | %-26s | %7s\n' step status seconds
  printf '%-12s-+-%-26s-+-%7s\n' ------------ -------------------------- -------
  for i in "${!names[@]}"; do
    printf '%-12s | %-26s | %7s\n' "${names[$i]}" "${statuses[$i]}" "${durations[$i]}"
  done
  echo "phase $phase: $([ "$failed" -eq 0 ] && echo PASS || echo FAIL) in ${SECONDS}s; logs: $OUT"
} | tee "$OUT/summary$phase.txt"
# The steps' logs in the order they ran, then the benchmark suites' own.
for log in "${names[@]/%/.log}" bench/{kernels,train,peers}.log; do
  if [ -f "$LOGS/$log" ]; then echo "===== $log"; cat "$LOGS/$log"; fi
done >"$OUT/phase$phase.log"
exit "$failed"
