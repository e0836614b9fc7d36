#!/usr/bin/env bash
# Prints the first python3 that can import every module named: $PYTHON when
# set, then python3 on PATH, then Debian's /usr/bin/python3 (where the apt
# packages python3-torch, python3-matplotlib, ... install). Exit 1: none can.
# Usage: scripts/python-with.sh MODULE...
for candidate in ${PYTHON:-} python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null &&
     "$candidate" -c "import $(IFS=,; echo "$*")" 2>/dev/null; then
    echo "$candidate"
    exit 0
  fi
done
exit 1
