#!/usr/bin/env bash
# The project's GPU check, end to end, on one machine with an NVIDIA GPU (sized for ~15 minutes on one GPU and
# 16 cores; every stage fits in 10 minutes, so a device session can run them as separate commands):
#   setup   the environment with a CUDA MinkowskiEngine: scripts/install_env.sh when $VENV is missing, then
#           scripts/build_minkowski.py (a given wheel, the cached CUDA wheel, or a build with MAX_JOBS=$(nproc)
#           for the visible GPU's architecture; CUDA 13.0 from PyPI when there is no nvcc)
#   tests   the CUDA-vs-CPU tests: tests/test_cuda_parity.py (SR-UNet34 forward/backward, NCCL SyncBatchNorm,
#           Point-E fp32 and bf16) and the FPS / kNN comparison; a skipped test is a failure here
#   bench   SR-UNet34 on a ScanNet-sized room (2 cm, 2.5 cm), Point-E two-stage sampling (fp32, bf16),
#           Text4Point pre-training steps/s beside the data pipeline's pairs/s; figures in $OUT/summary.md
#   suite   the whole test suite with CUDA visible (what is left of $BUDGET_S)
#
#   scripts/gpu_check.sh [setup] [tests] [bench] [suite]      (default: all four, in this order)
#   VENV=.venv  OUT=runs/gpu_check  BUDGET_S=840  LANG3D_ME_WHEEL=path/to/MinkowskiEngine-*.whl (a CUDA wheel
#   built elsewhere, e.g. by scripts/check_cuda_build.sh for this GPU's architecture)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT=${OUT:-runs/gpu_check}
BUDGET_S=${BUDGET_S:-840}
PY="$VENV/bin/python"
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(setup tests bench suite)
mkdir -p "$OUT"
started=$SECONDS
failed=()   # stages or benchmarks that failed; the check goes on with the next one (setup failing stops it)
left() { local s=$((BUDGET_S - (SECONDS - started))); echo $((s > 10 ? s : 10)); }   # timeout 0 = none
say() { echo "gpu-check [$((SECONDS - started)) s]: $*"; }

if ! nvidia-smi -L; then
  echo "gpu-check: no NVIDIA GPU visible (nvidia-smi failed)" >&2
  exit 1
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${LANG3D_CUDA:-}" ] && ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  export LANG3D_CUDA=pip
fi

for stage in "${STAGES[@]}"; do
  case $stage in
    setup)
      say "setup (LANG3D_CUDA=${LANG3D_CUDA:-system}, MAX_JOBS=$MAX_JOBS)"
      if [ ! -f "$VENV/.lang3d-installed" ]; then
        VENV=$VENV bash scripts/install_env.sh
      fi
      "$PY" scripts/build_minkowski.py
      "$PY" -c "import torch, MinkowskiEngine as ME; assert torch.cuda.is_available(), 'torch sees no GPU'; \
assert ME.is_cuda_available(), 'MinkowskiEngine has no CUDA'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0), '| ME', ME.__version__)"
      ;;
    tests)
      say "CUDA-vs-CPU tests"
      OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} timeout "$(left)" "$PY" -m pytest -q -rs \
        tests/test_cuda_parity.py "tests/test_point_ops.py::test_fps_and_knn_on_cuda_match_cpu" \
        | tee "$OUT/cuda_tests.log" || failed+=(tests)
      if grep -q "skipped" "$OUT/cuda_tests.log"; then
        echo "gpu-check: CUDA tests were skipped on a GPU machine" >&2
        failed+=(tests-skipped)
      fi
      ;;
    bench)
      say "benchmarks"
      rm -f "$OUT/figures.jsonl"
      export LANG3D_BENCH_RECORD="$OUT/figures.jsonl"
      timeout "$(left)" "$PY" benchmarks/srunet_speed.py --device cuda || failed+=(srunet_speed)
      timeout "$(left)" "$PY" benchmarks/point_e_sampling.py --device cuda || failed+=(point_e_sampling)
      timeout "$(left)" "$PY" benchmarks/text4point_pretrain.py || failed+=(text4point_pretrain)
      [ ! -s "$OUT/figures.jsonl" ] || "$PY" benchmarks/summary.py "$OUT/figures.jsonl" "$OUT/summary.md"
      ;;
    suite)
      say "the whole suite with CUDA visible ($(left) s left)"
      timeout "$(left)" "$PY" -m pytest -q -x | tee "$OUT/suite.log" | tail -n 30 || failed+=(suite)
      ;;
    *)
      echo "gpu-check: unknown stage '$stage' (setup, tests, bench, suite)" >&2
      exit 2
      ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "done"
