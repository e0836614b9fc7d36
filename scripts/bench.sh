#!/usr/bin/env bash
# lowbit's benchmarks in one command. Builds (scripts/setup.sh), runs the
# kernel, training-step and inference suites (Google Benchmark: on the GPU
# when there is one, else on the CPU backend, labelled as such), then
# PyTorch's equivalents at the same sizes when a python3 can import torch
# (its int8 and fp32 inference on the CPU), then the torch-ops suite when
# the build holds lowbit_torch (-DLOWBIT_TORCH=ON) and a python3 imports
# torch (lowbit_torch's ops against torch.fake_quantize_*, the fused EMA
# observer and the learnable fake quant, forward + backward, 2^20..2^26
# elements, float32 and bfloat16), and writes into --out:
#   kernels.json, train.json,  the suites' raw Google Benchmark JSON
#   inference.json             (the inference suite trains its models on
#                              Fashion-MNIST: $LOWBIT_DATA_DIR, else Debian's)
#   peers.json                 PyTorch's figures (bench/peers/torch_peers.py)
#   machine.json               card, driver, CUDA, cuDNN, host and date
#   results.json               all of it merged, with every ratio
#                              (schema: bench/results.schema.json)
#   results.md                 the tables, and kernels_roofline.png and
#                              training.png (matplotlib)
#   torch_ops.json             the torch-ops suite (bench/torch_ops_bench.py;
#                              schema: bench/torch_ops.schema.json)
#   torch_ops.md               its table, with the ratio to torch's time
# Meant to finish in under 5 minutes on an H100/H200 (no GPU run has timed
# it yet); about 105 s on this project's 2-core CPU machine, PyTorch included,
# and the torch-ops suite about 45 s more there (idle; nearly 3 min on a busy one).
#
# Usage: scripts/bench.sh [options]
#   --out DIR        where the results go (default bench-results/)
#   --build-dir DIR  the build to run (default build)
#   --no-build       run what --build-dir holds; skip setup and build
#   --no-peers       skip PyTorch
#   --quick          the smallest size and batches only, briefly: checks that
#                    the pipeline works (its figures are noise)
#   --min-time S     seconds of timed calls per kernel benchmark (default 0.05)
#   --no-torch-ops   skip the torch-ops suite
#   --torch-ops-only run the torch-ops suite alone (it then must run: the
#                    build needs -DLOWBIT_TORCH=ON, which setup builds then)
#   --torch-ops-device auto|cpu|cuda
#                    where the torch-ops suite runs (default auto: cuda when
#                    torch has a device and lowbit_torch was built against a
#                    torch with CUDA)
# Exit status: 0 when every suite and the report succeeded (PyTorch failing
# is recorded in the results, not fatal; so is a torch-ops case that cannot
# run, which is listed as NOT RUN), 1 otherwise, 2 for bad usage.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

out=$root/bench-results
build_dir=$root/build
do_build=1
peers=1
quick=0
min_time=0.05
torch_ops=1
torch_ops_only=0
torch_ops_device=auto

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift ;;
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift ;;
    --no-build) do_build=0 ;;
    --no-peers) peers=0 ;;
    --quick) quick=1 ;;
    --min-time) min_time=${2:?--min-time needs seconds}; shift ;;
    --no-torch-ops) torch_ops=0 ;;
    --torch-ops-only) torch_ops_only=1 ;;
    --torch-ops-device)
      torch_ops_device=${2:?--torch-ops-device needs auto, cpu or cuda}; shift
      case "$torch_ops_device" in
        auto|cpu|cuda) ;;
        *) echo "bench.sh: --torch-ops-device takes auto, cpu or cuda" >&2; exit 2 ;;
      esac ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

[ "$torch_ops" -eq 1 ] || [ "$torch_ops_only" -eq 0 ] ||
  { echo "bench.sh: --torch-ops-only and --no-torch-ops contradict" >&2; exit 2; }

# Paths on the command line are the caller's; the rest runs from the root.
out=$(realpath -m "$out")
build_dir=$(realpath -m "$build_dir")
cd "$root"
if [ "$do_build" -eq 1 ]; then
  [ "$build_dir" = "$root/build" ] || { echo "bench.sh: --build-dir needs --no-build" >&2; exit 2; }
  if [ "$torch_ops_only" -eq 1 ]; then
    scripts/setup.sh -DLOWBIT_TORCH=ON
  else
    scripts/setup.sh
  fi
fi
torch_library="$build_dir/host/torch/liblowbit_torch.so"
mkdir -p "$out"
rm -f "$out"/torch_ops.{json,md,log}

# lowbit_torch against torch.* (bench/torch_ops_bench.py), then its table.
# Sets failed when the suite should run and does not; a case one side of
# which cannot run is in the table and printed, not a failure.
run_torch_ops() {
  local torch_py
  if [ "$torch_ops" -eq 0 ]; then
    return
  elif [ ! -f "$torch_library" ]; then
    echo "bench.sh: torch-ops suite NOT RUN: $torch_library is missing" \
         "(configure with -DLOWBIT_TORCH=ON)" >&2
    [ "$torch_ops_only" -eq 0 ] || failed=1
    return
  elif ! torch_py=$(scripts/python-with.sh torch); then
    echo "bench.sh: torch-ops suite NOT RUN: no python3 here can import torch" \
         "(apt-get install python3-torch)" >&2
    [ "$torch_ops_only" -eq 0 ] || failed=1
    return
  fi
  local args=(--device "$torch_ops_device" --library "$torch_library" --out "$out/torch_ops.json")
  [ "$quick" -eq 0 ] || args+=(--sizes 65536 --repeats 2)
  echo "bench.sh: torch ops ($torch_py) -> $out/torch_ops.json"
  if "$torch_py" bench/torch_ops_bench.py "${args[@]}" 2>"$out/torch_ops.log"; then
    sed -n 's/^torch_ops_bench: WARNING:/bench.sh: torch ops WARNING:/p' "$out/torch_ops.log" >&2
    torch_ops_not_run=$(sed -n 's/^torch_ops_bench: NOT RUN:/bench.sh: torch ops NOT RUN:/p' \
                          "$out/torch_ops.log")
    [ -z "$torch_ops_not_run" ] || echo "$torch_ops_not_run" >&2
  else
    failed=1
    tail -n 5 "$out/torch_ops.log"
  fi
}

failed=0
torch_ops_not_run=""
if [ "$torch_ops_only" -eq 1 ]; then
  run_torch_ops
  if [ -f "$out/torch_ops.json" ]; then
    py=$(scripts/python-with.sh json) || { echo "bench.sh: no python3 found" >&2; exit 1; }
    "$py" bench/report.py --torch-ops "$out/torch_ops.json" --out-dir "$out" || failed=1
  fi
  echo "bench.sh: torch ops in $out/torch_ops.md$([ "$failed" -eq 0 ] || echo ' (FAILED)')"
  exit "$failed"
fi
kernels_bin="$build_dir/bench/lowbit_bench_kernels"
train_bin="$build_dir/bench/lowbit_bench_train"
inference_bin="$build_dir/bench/lowbit_bench_inference"
for bin in "$kernels_bin" "$train_bin" "$inference_bin"; do
  [ -x "$bin" ] || { echo "bench.sh: $bin is missing (build first, or drop --no-build)" >&2; exit 1; }
done
rm -f "$out"/{kernels,train,inference,peers,machine,results}.json "$out"/results.md \
  "$out"/{kernels_roofline,training}.png

py=$(scripts/python-with.sh json matplotlib || scripts/python-with.sh json) ||
  { echo "bench.sh: no python3 found" >&2; exit 1; }

if [ "$quick" -eq 1 ]; then
  kernel_args=(--benchmark_filter=/n:65536/ --benchmark_min_time=0.01)
  train_args=(--benchmark_filter=batch:64 --benchmark_min_time=0.01)
  inference_args=(--benchmark_filter=/batch:1/ --benchmark_min_time=0.01)
else
  kernel_args=(--benchmark_min_time="$min_time")
  train_args=(--benchmark_min_time=0.25)
  inference_args=(--benchmark_min_time=0.5)
fi
echo "bench.sh: kernels -> $out/kernels.json"
"$kernels_bin" "${kernel_args[@]}" --benchmark_out="$out/kernels.json" \
  --benchmark_out_format=json >"$out/kernels.log" 2>&1 || { failed=1; tail -n 5 "$out/kernels.log"; }
echo "bench.sh: training step -> $out/train.json"
"$train_bin" "${train_args[@]}" --benchmark_out="$out/train.json" \
  --benchmark_out_format=json >"$out/train.log" 2>&1 || { failed=1; tail -n 5 "$out/train.log"; }
echo "bench.sh: inference -> $out/inference.json"
"$inference_bin" "${inference_args[@]}" --benchmark_out="$out/inference.json" \
  --benchmark_out_format=json >"$out/inference.log" 2>&1 ||
  { failed=1; tail -n 5 "$out/inference.log"; }

# PyTorch at the sizes the suites ran: the GPU suite goes to 2^26.
peer_args=(--out "$out/peers.json")
if grep -q '"name": "gpu/' "$out/kernels.json" 2>/dev/null; then
  sizes=65536,262144,1048576,4194304,16777216,67108864
  steps=50
else
  sizes=65536,1048576,16777216
  steps=10
fi
if [ "$quick" -eq 1 ]; then
  peer_args+=(--sizes 65536 --batches 64 --train-steps 3 --warmup-steps 1 --min-time 0.01
              --inference-batches 1 --inference-min-time 0.01)
else
  peer_args+=(--sizes "$sizes" --train-steps "$steps" --min-time "$min_time")
fi
report_peers=()
if [ "$peers" -eq 0 ]; then
  report_peers=(--peers-skipped "--no-peers was given")
elif ! torch_py=$(scripts/python-with.sh torch); then
  report_peers=(--peers-skipped "no python3 here can import torch")
else
  echo "bench.sh: PyTorch ($torch_py) -> $out/peers.json"
  if "$torch_py" bench/peers/torch_peers.py "${peer_args[@]}" 2>"$out/peers.log"; then
    report_peers=(--peers "$out/peers.json")
  else
    tail -n 5 "$out/peers.log"
    report_peers=(--peers-skipped "torch_peers.py failed: $(tail -n 1 "$out/peers.log")")
  fi
fi

run_torch_ops
report_torch_ops=()
[ -f "$out/torch_ops.json" ] && report_torch_ops=(--torch-ops "$out/torch_ops.json")

# The card and software versions, as the tools report them.
gpu_info=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
nvcc_version=$( (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>/dev/null | tail -n 1 || true)
cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1 || true)
"$py" - "$out/machine.json" "$gpu_info" "$nvcc_version" "$cpu_model" "$out/kernels.json" \
  "$out/train.json" <<'PY'
import json, os, re, socket, sys, datetime

path, gpu_info, nvcc, cpu, kernels_path, train_path = sys.argv[1:]
def context(p):
    try:
        return json.load(open(p)).get("context", {})
    except (OSError, ValueError):
        return {}
kernels, train = context(kernels_path), context(train_path)
name, _, driver = gpu_info.partition(", ")
cudnn = re.search(r"cuDNN ([\d.]+)", train.get("backend", ""))
machine = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "description": train.get("backend") or kernels.get("backend") or "unknown",
    "gpu": name or kernels.get("gpu"),
    "driver": driver or None,
    "cuda_runtime": kernels.get("cuda_runtime"),
    "cudnn": cudnn.group(1) if cudnn else None,
    "nvcc": nvcc or None,
    "host": socket.gethostname(),
    "cpu": cpu or None,
    "cpus": os.cpu_count(),
}
json.dump(machine, open(path, "w"), indent=1)
PY

# A suite that failed before writing its JSON (the inference one without
# Fashion-MNIST) has already set failed; the report shows the rest.
report_inference=()
[ -f "$out/inference.json" ] && report_inference=(--inference "$out/inference.json")
if [ -f "$out/kernels.json" ] && [ -f "$out/train.json" ]; then
  "$py" bench/report.py --kernels "$out/kernels.json" --train "$out/train.json" \
    "${report_inference[@]}" --machine "$out/machine.json" --out-dir "$out" \
    "${report_peers[@]}" "${report_torch_ops[@]}" || failed=1
else
  failed=1
fi
[ -f "$out/results.md" ] && sed -n '/^## DESIGN/,/^## Kernels at/p' "$out/results.md" | sed '$d'
[ -z "$torch_ops_not_run" ] || echo "$torch_ops_not_run" >&2
[ ! -f "$out/torch_ops.md" ] || echo "bench.sh: lowbit_torch against torch.* in $out/torch_ops.md"
echo "bench.sh: results in $out/results.md$([ "$failed" -eq 0 ] || echo ' (some steps FAILED: see the logs there)')"
exit "$failed"
