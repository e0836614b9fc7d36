#!/usr/bin/env bash
# CTest's bench_report: scripts/bench.sh --quick on the built binaries, then
# check_results.py on what it wrote.
# Usage: bench/test_report.sh BUILD_DIR OUT_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=$(cd "$1" && pwd)
"$root/scripts/bench.sh" --quick --no-build --build-dir "$build_dir" --out "$2"
py=$("$root/scripts/python-with.sh" jsonschema markdown) || {
  echo "bench_report: no python3 can import jsonschema and markdown" \
       "(scripts/setup.sh installs python3-jsonschema and python3-markdown)" >&2
  exit 1
}
"$py" "$root/bench/check_results.py" "$2"

# The checker must catch a broken output: a missing key, a lost inference
# row, a wrong ratio and a ragged table.
broken="$2-broken"
rm -rf "$broken" && cp -r "$2" "$broken"
"$py" - "$broken" <<'PY'
import json, os, sys
path = os.path.join(sys.argv[1], "results.json")
results = json.load(open(path))
del results["targets"]
results["inference"].pop()
results["inference"][0]["speedup_vs_torch"] = 1e9
json.dump(results, open(path, "w"))
with open(os.path.join(sys.argv[1], "results.md"), "a") as f:
    f.write("\n| a | b |\n|---|---|\n| 1 | 2 | 3 |\n")
PY
if "$py" "$root/bench/check_results.py" "$broken" 2>"$broken/check.log"; then
  echo "bench_report: check_results.py passed a broken output" >&2
  exit 1
fi
for expected in "'targets' is a required property" "3 cells under a header of 2" \
                "benchmarks of inference.json" "speed-up 1000000000.0"; do
  grep -qF "$expected" "$broken/check.log" || {
    echo "bench_report: check_results.py did not report: $expected" >&2
    cat "$broken/check.log" >&2
    exit 1
  }
done
echo "bench_report: check_results.py rejects a broken output"

# The torch-ops suite ran when the build holds lowbit_torch (-DLOWBIT_TORCH=ON):
# the checker must catch a wrong ratio, a time beside an error, and a lost row.
[ -f "$2/torch_ops.json" ] || {
  echo "bench_report: no torch-ops suite in this build (-DLOWBIT_TORCH=OFF or no torch)"
  exit 0
}
broken="$2-torch-ops-broken"
rm -rf "$broken" && mkdir -p "$broken" && cp "$2"/torch_ops.{json,md} "$broken"
"$py" - "$broken" <<'PY'
import json, os, sys
path = os.path.join(sys.argv[1], "torch_ops.json")
run = json.load(open(path))
timed = [r for r in run["cases"] if r["ratio"]]
timed[0]["ratio"] *= 2
timed[-1]["lowbit_error"] = "RuntimeError: made up"
json.dump(run, open(path, "w"))
md = os.path.join(sys.argv[1], "torch_ops.md")
lines = open(md).read().splitlines()
last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
open(md, "w").write("\n".join(lines[:last_row] + lines[last_row + 1:]) + "\n")
PY
if "$py" "$root/bench/check_results.py" --torch-ops-only "$broken" 2>"$broken/check.log"; then
  echo "bench_report: check_results.py passed a broken torch-ops output" >&2
  exit 1
fi
for expected in "ratio " "lowbit has both a time and an error" "the op table does not hold"; do
  grep -qF "$expected" "$broken/check.log" || {
    echo "bench_report: check_results.py did not report: $expected" >&2
    cat "$broken/check.log" >&2
    exit 1
  }
done
echo "bench_report: check_results.py rejects a broken torch-ops output"
