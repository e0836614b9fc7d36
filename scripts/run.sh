#!/usr/bin/env bash
# The main job (until the trainer lands): installs what is missing, builds,
# self-checks the kernels against the CPU reference and TensorFlow's nudging
# cases, then benchmarks them. On the GPU when there is one, else on the CPU
# reference. Extra arguments go to the benchmark (e.g. --benchmark_filter=...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== self-check"
build/tests/lowbit_tests --gtest_brief=1 \
  --gtest_filter='Gpu*:Nudge*:AllWidths/Nudge*:Probe*:SteBackward.Probe*:AffineGolden*'
echo "== kernel benchmark"
build/bench/lowbit_bench_kernels --benchmark_min_time=0.05 "$@"
