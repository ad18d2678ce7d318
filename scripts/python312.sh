#!/usr/bin/env bash
# Prints the Python 3.12 interpreter the project's environments are made from: $PYTHON when set, else python3.12 on
# PATH, else pyenv's newest 3.12; fails with a message when none is Python 3.12.
set -uo pipefail
candidates=("${PYTHON:-python3.12}")
if [ -z "${PYTHON:-}" ] && command -v pyenv >/dev/null; then
  candidates+=($(ls -d "$(pyenv root)"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -n 1))
fi
for python in "${candidates[@]}"; do
  if "$python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo "$python"
    exit 0
  fi
done
echo "no Python 3.12 found (tried ${candidates[*]}); lang3d's stack is Python 3.12 (set PYTHON=...)" >&2
exit 1
