#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test. CPU tests always
# run; the Gpu* kernel tests run on a GPU if there is one and, always, on the
# CPU SIMT emulator (tests/simt); tests that need cuDNN or cuBLAS skip
# without a GPU. The PyTorch operators are built and tested against
# Debian's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh -DLOWBIT_SIMT=ON -DLOWBIT_TORCH=ON
ctest --test-dir build --output-on-failure -j "$(nproc)"
