#!/usr/bin/env bash
# Runs tests/torch/test_ops.py and test_nn.py with the first python3 that
# imports torch (scripts/python-with.sh; Debian's python3-torch), against the
# library given; test_nn.py also runs `lowbit train` (the CLI given) to
# compare a training run. A missing torch fails: the build asked for the
# torch ops.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
library=${1:?usage: run.sh LIBRARY [LOWBIT_CLI]}
cli=${2:-}
python=$("$here/../../scripts/python-with.sh" torch) ||
  { echo "torch tests: no python3 here imports torch (apt-get install python3-torch)" >&2; exit 1; }
"$python" "$here/test_ops.py" "$library" -v
exec "$python" "$here/test_nn.py" "$library" ${cli:+--lowbit-cli "$cli"} -v
