#!/usr/bin/env bash
# lowbit's benchmarks in one command. Builds (scripts/setup.sh), runs the
# kernel, training-step and inference suites (Google Benchmark: on the GPU
# when there is one, else on the CPU backend, labelled as such), then
# PyTorch's equivalents at the same sizes when a python3 can import torch
# (its int8 and fp32 inference on the CPU), and writes into --out:
#   kernels.json, train.json,  the suites' raw Google Benchmark JSON
#   inference.json             (the inference suite trains its models on
#                              Fashion-MNIST: $LOWBIT_DATA_DIR, else Debian's)
#   peers.json                 PyTorch's figures (bench/peers/torch_peers.py)
#   machine.json               card, driver, CUDA, cuDNN, host and date
#   results.json               all of it merged, with every ratio
#                              (schema: bench/results.schema.json)
#   results.md                 the tables, and kernels_roofline.png and
#                              training.png (matplotlib)
# Meant to finish in under 5 minutes on an H100/H200 (no GPU run has timed
# it yet); about 105 s on this project's 2-core CPU machine, PyTorch included.
#
# Usage: scripts/bench.sh [options]
#   --out DIR        where the results go (default bench-results/)
#   --build-dir DIR  the build to run (default build)
#   --no-build       run what --build-dir holds; skip setup and build
#   --no-peers       skip PyTorch
#   --quick          the smallest size and batches only, briefly: checks that
#                    the pipeline works (its figures are noise)
#   --min-time S     seconds of timed calls per kernel benchmark (default 0.05)
# Exit status: 0 when every suite and the report succeeded (PyTorch failing
# is recorded in the results, not fatal), 1 otherwise, 2 for bad usage.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

out=$root/bench-results
build_dir=$root/build
do_build=1
peers=1
quick=0
min_time=0.05

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
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Paths on the command line are the caller's; the rest runs from the root.
out=$(realpath -m "$out")
build_dir=$(realpath -m "$build_dir")
cd "$root"
if [ "$do_build" -eq 1 ]; then
  [ "$build_dir" = "$root/build" ] || { echo "bench.sh: --build-dir needs --no-build" >&2; exit 2; }
  scripts/setup.sh
fi
kernels_bin="$build_dir/bench/lowbit_bench_kernels"
train_bin="$build_dir/bench/lowbit_bench_train"
inference_bin="$build_dir/bench/lowbit_bench_inference"
for bin in "$kernels_bin" "$train_bin" "$inference_bin"; do
  [ -x "$bin" ] || { echo "bench.sh: $bin is missing (build first, or drop --no-build)" >&2; exit 1; }
done
mkdir -p "$out"
rm -f "$out"/{kernels,train,inference,peers,machine,results}.json "$out"/results.md \
  "$out"/{kernels_roofline,training}.png

py=$(scripts/python-with.sh json matplotlib || scripts/python-with.sh json) ||
  { echo "bench.sh: no python3 found" >&2; exit 1; }

failed=0
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
    "${report_peers[@]}" || failed=1
else
  failed=1
fi
[ -f "$out/results.md" ] && sed -n '/^## DESIGN/,/^## Kernels at/p' "$out/results.md" | sed '$d'
echo "bench.sh: results in $out/results.md$([ "$failed" -eq 0 ] || echo ' (some steps FAILED: see the logs there)')"
exit "$failed"
