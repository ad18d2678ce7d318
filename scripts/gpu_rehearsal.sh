#!/usr/bin/env bash
# A rehearsal of the GPU check on this machine (`make gpu-rehearsal`): proof that the call on the GPU machine cannot
# fail on a missing package or a registry.
#   1. a Python 3.12 environment holding only what the GPU machine lists, at those versions
#      (requirements-gpu-machine.txt; made once with the registry, as that machine's image was)
#   2. the size of what a device call would carry: the working tree that travels plus the bundle
#   3. scripts/gpu_check.sh with that environment's python as the machine's python3, at its CPU sizes, with the
#      package index off (PIP_NO_INDEX=1) and, where unshare works, in a network namespace of its own with no
#      network at all; each stage's wall time is printed
#   REHEARSAL=.gpu-rehearsal  BUNDLE=gpu-bundle  (make gpu-bundle writes it)
set -euo pipefail
cd "$(dirname "$0")/.."
REHEARSAL=${REHEARSAL:-.gpu-rehearsal}
BUNDLE=${BUNDLE:-gpu-bundle}
VENV="$REHEARSAL/venv"
started=$SECONDS

stamp="$VENV/.machine-packages"
if ! cmp -s requirements-gpu-machine.txt "$stamp"; then
  echo "gpu-rehearsal: the GPU machine's environment in $VENV (requirements-gpu-machine.txt)"
  rm -rf "$VENV"
  python=$(bash scripts/python312.sh)
  "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet -r requirements-gpu-machine.txt
  cp requirements-gpu-machine.txt "$stamp"
fi
echo "gpu-rehearsal: environment ready ($((SECONDS - started)) s)"
if [ ! -f "$BUNDLE/MANIFEST.txt" ]; then
  echo "gpu-rehearsal: no bundle at $BUNDLE: run make gpu-bundle first" >&2
  exit 1
fi
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
bundle=$(du -sb "$BUNDLE" | cut -f1)
echo "gpu-rehearsal: a device call carries the working tree ($((tree / 1024)) KiB) and $BUNDLE ($((bundle / 1024)) KiB):" \
  "$(((tree + bundle) / 1048576)) MiB of 64 MiB"

isolate=()
if unshare --net true 2>/dev/null; then
  isolate=(unshare --net)
  echo "gpu-rehearsal: the check runs in a network namespace without network (unshare --net)"
else
  echo "gpu-rehearsal: unshare --net is not allowed here: the check runs with the package index off only"
fi
export OUT=${OUT:-$REHEARSAL/out} SITE=$REHEARSAL/site
rm -rf "$OUT"
"${isolate[@]}" env PYTHON="$VENV/bin/python" BUNDLE="$BUNDLE" LANG3D_GPU_CHECK_CPU=1 PIP_NO_INDEX=1 \
  HF_HUB_OFFLINE=1 bash scripts/gpu_check.sh
echo "gpu-rehearsal: passed in $((SECONDS - started)) s; $OUT holds $(find "$OUT" -type f | wc -l) files" \
  "(at most 8 come back from a device call)"
