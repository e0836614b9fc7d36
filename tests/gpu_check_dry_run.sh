#!/usr/bin/env bash
# The shell logic of scripts/gpu-check.sh without a GPU: usage, and each
# phase with no time left (PHASE_BUDGET=0), so every step reports itself not
# run, the phase fails, and its files stay within what the device tool brings
# back (8 files).
set -euo pipefail
script="$1/scripts/gpu-check.sh"
out=$(mktemp -d)
stdout=$(mktemp)
trap 'rm -rf "$out" "$stdout"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

help=$("$script" --help)
for phase in 1 2 3 4; do
  grep -q "run(command=\"scripts/gpu-check.sh $phase\"" <<<"$help" ||
    fail "--help does not show the call of phase $phase"
done
rc=0; "$script" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "no phase: exit $rc, expected 2"
rc=0; "$script" 5 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "phase 5: exit $rc, expected 2"

declare -A steps=([1]="configure build gpu ctest" [2]="configure build train_w0a0 train_w8a8
train_w4a4 train_w2a2 bench" [3]="configure build memcheck racecheck initcheck" [4]="configure build torch_cpu torch_cuda torch_bench")
for phase in 1 2 3 4; do
  rm -rf "${out:?}"/*
  rc=0
  OUT="$out" PHASE_BUDGET=0 "$script" "$phase" >"$stdout" 2>&1 || rc=$?
  [ "$rc" -eq 1 ] || fail "phase $phase with no budget: exit $rc, expected 1"
  summary="$out/summary$phase.txt"
  [ -f "$summary" ] || fail "phase $phase wrote no $summary"
  [ -f "$out/phase$phase.log" ] || fail "phase $phase wrote no phase$phase.log"
  for step in ${steps[$phase]}; do
    grep -q "^$step *| FAIL (phase budget spent)" "$summary" ||
      fail "phase $phase: step $step is not reported as not run:\n$(cat "$summary")"
  done
  [ "$(tail -n 1 "$stdout")" = "$(tail -n 1 "$summary")" ] ||
    fail "phase $phase: the summary is not printed last"
  grep -q "^phase $phase: FAIL" "$summary" || fail "phase $phase: no FAIL verdict"
  files=$(find "$out" -type f | wc -l)
  [ "$files" -le 8 ] || fail "phase $phase left $files files in \$OUT (the device tool brings back 8)"
done
echo "gpu-check.sh dry run: usage and all four phases behave"
