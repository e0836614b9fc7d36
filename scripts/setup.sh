#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks, then configures and builds
# lowbit into build/. Used by scripts/run.sh, scripts/test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools and libraries, Fashion-MNIST (the default training data), what
# scripts/bench.sh's report and its test use (schema check, markdown
# rendering, charts), and Boost.Context for the CPU SIMT emulator that runs
# the CUDA kernels in the tests (-DLOWBIT_SIMT=ON, tests/simt).
packages=(cmake g++ make googletest libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
          libcli11-dev zlib1g-dev dataset-fashion-mnist
          python3 python3-jsonschema python3-markdown python3-matplotlib libboost-context-dev)
# The PyTorch operators (-DLOWBIT_TORCH=ON, as scripts/test.sh builds) need
# libtorch, and their tests Debian's torch.
case " $* " in
  *" -DLOWBIT_TORCH=ON "*) packages+=(libtorch-dev python3-torch) ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# onnxruntime (with numpy) runs the ONNX files that save_onnx() writes in
# tests/test_onnx.cpp, through tests/onnx_run.py; it comes from PyPI.
if ! scripts/python-with.sh onnxruntime numpy >/dev/null; then
  echo "setup: installing onnxruntime"
  python3 -m pip install --quiet onnxruntime
fi

export CUDACXX="${CUDACXX:-/usr/local/cuda/bin/nvcc}"
if [ ! -x "$CUDACXX" ]; then
  echo "setup: no CUDA compiler at $CUDACXX (install the CUDA Toolkit or set CUDACXX)" >&2
  exit 1
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$(nproc)"
