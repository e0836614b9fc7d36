#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test. GPU tests skip
# without a CUDA device; CPU tests always run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
