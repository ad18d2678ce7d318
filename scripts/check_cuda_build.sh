#!/usr/bin/env bash
# Compile-only proof of MinkowskiEngine's CUDA build, on any machine (no GPU needed): CUDA 13.0 from PyPI
# (LANG3D_CUDA=pip, cached in ~/.cache/lang3d/cuda-13.0), the project's torch, TORCH_CUDA_ARCH_LIST (default
# 8.0;9.0: A100, H100/H200), the patch steps of scripts/build_minkowski.py. Long (tens of minutes on 2 cores):
# outside CI. The wheel lands in the CUDA wheel cache (~/.cache/lang3d/wheels/...-cuda13.0-sm80-sm90/); an
# existing cached wheel is rebuilt only with REBUILD=1. On a failure, ninja reruns with -k 0 to list every
# failing object, not only the first.
#   scripts/check_cuda_build.sh            log: $LOG (default /tmp/cuda_build.log)
#   VENV=.venv MAX_JOBS=2 BUILD_DIR=/tmp/me-cuda-build TORCH_CUDA_ARCH_LIST="8.0;9.0" REBUILD=0
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
LOG=${LOG:-/tmp/cuda_build.log}
BUILD_DIR=${BUILD_DIR:-/tmp/me-cuda-build}
export LANG3D_CUDA=pip MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
if [ "${REBUILD:-0}" = 1 ]; then
  cache=$("$PY" -c "import sys; sys.path.insert(0, 'scripts'); import build_minkowski as b; print(b.cache_dir(True))")
  rm -f "$cache"/*.whl
fi
{
  echo "check_cuda_build: $(date -u +%FT%TZ) $(nproc) cores, MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  start=$SECONDS
  nice -n 19 "$PY" scripts/build_minkowski.py --cuda --no-install --build-dir "$BUILD_DIR"
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "check_cuda_build: FAILED (rc $rc) after $((SECONDS - start)) s; every failing object:"
    for tree in "$BUILD_DIR"/*/build/temp.*; do
      [ -f "$tree/build.ninja" ] && (cd "$tree" && nice -n 19 ninja -k 0 -j "$MAX_JOBS" 2>&1 | grep -E "FAILED|error" )
    done
    exit $rc
  fi
  echo "check_cuda_build: OK in $((SECONDS - start)) s on $(nproc) cores (MAX_JOBS=$MAX_JOBS)"
  "$PY" - <<'PYEOF'
import sys, zipfile
sys.path.insert(0, "scripts")
import build_minkowski as b
wheel = sorted(b.cache_dir(True).glob("*.whl"))[-1]
names = zipfile.ZipFile(wheel).namelist()
ext = [n for n in names if n.startswith("MinkowskiEngineBackend/_C") and n.endswith(".so")]
blob = zipfile.ZipFile(wheel).read(ext[0])
linked = [lib for lib in ("libcudart.so", "libcusparse.so", "libc10_cuda.so") if lib.encode() in blob]
print(f"check_cuda_build: wheel {wheel} ({wheel.stat().st_size / 1e6:.1f} MB), extension {ext[0]} "
      f"({len(blob) / 1e6:.1f} MB) linked against {linked}")
if len(linked) < 3:
    sys.exit("check_cuda_build: the extension is not a CUDA build")
PYEOF
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
