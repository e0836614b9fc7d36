#!/usr/bin/env bash
# The main job: installs what is missing, builds, and trains LeNet-5 with
# 4-bit weights and activations on Fashion-MNIST (/usr/share/datasets/
# fashion-mnist), on the GPU when there is one, else on the CPU. Extra
# arguments go to `lowbit train` (see `build/host/lowbit train --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/host/lowbit train --weight-bits 4 --act-bits 4 "$@"
