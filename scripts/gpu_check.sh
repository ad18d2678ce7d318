#!/usr/bin/env bash
# The project's GPU check in one command, made for the lent GPU machine: it has no network, so nothing here reaches a
# package registry. Everything the machine's own python3 lacks comes from the bundle `make gpu-bundle` wrote; the
# project runs from the working tree (PYTHONPATH), not from an install.
#   setup    pip install --no-index --no-deps --target $SITE $BUNDLE/wheels/*.whl; the native libraries into
#            $SITE.lib (LD_LIBRARY_PATH); import check: torch sees the GPU, MinkowskiEngine has CUDA, and which
#            OpenBLAS the extension loaded
#   tests    the CUDA-vs-CPU parity tests (tests/test_cuda_parity.py, FPS / kNN); a skipped test fails the check
#   bench    SR-UNet34 forward + backward on a ScanNet-sized room at 2 cm and 2.5 cm; Point-E base40M + upsampler
#            sampling, s/sample in fp32 and bf16; one pre-training step at the shipped batch of 32 ScanNet-sized frames
#            at full width, with peak GPU memory, beside the input pipeline's frames/s with one worker per core
#   summary  $OUT/summary.md: every figure, the machine and the date
# $OUT ends with at most 8 files: summary.md, figures.jsonl, setup.log, tests.log, bench.log, and the caller's own log.
#
#   scripts/gpu_check.sh [setup] [tests] [bench] [summary]       (default: all four, in this order)
#   PYTHON=python3 BUNDLE=gpu-bundle SITE=/tmp/lang3d-site OUT=runs/gpu_check BUDGET_S=540 (the whole check's limit)
#   LANG3D_GPU_CHECK_CPU=1   the CPU sizes `make gpu-rehearsal` runs: no GPU asserts, the parity tests only collected,
#                            small benchmarks
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUNDLE=${BUNDLE:-gpu-bundle}
SITE=${SITE:-/tmp/lang3d-site}
OUT=${OUT:-runs/gpu_check}
BUDGET_S=${BUDGET_S:-540}
CPU=${LANG3D_GPU_CHECK_CPU:-0}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(setup tests bench summary)
mkdir -p "$OUT"
export PIP_NO_INDEX=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$SITE.lib/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LANG3D_BENCH_RECORD="$OUT/figures.jsonl"
started=$SECONDS
failed=()
left() { local s=$((BUDGET_S - (SECONDS - started))); echo $((s > 10 ? s : 10)); }
say() { echo "gpu-check [$((SECONDS - started)) s]: $*"; }
stage_start=0
stage_done() { say "$1 took $((SECONDS - stage_start)) s"; }
# step NAME LOG COMMAND...: run COMMAND within what is left of the budget, its output also appended to LOG; a failure
# is recorded under NAME and the check goes on
step() {
  local name=$1 log=$2
  shift 2
  timeout "$(left)" "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("$name")
}

for stage in "${STAGES[@]}"; do
  stage_start=$SECONDS
  case $stage in
    setup)
      say "setup: the bundle $BUNDLE into $SITE, with the package index off"
      if [ ! -d "$BUNDLE/wheels" ]; then
        echo "gpu-check: no bundle at $BUNDLE (make gpu-bundle writes it; carry it with the call)" >&2
        exit 1
      fi
      rm -rf "$SITE" "$SITE.lib" "$OUT/setup.log"
      step pip "$OUT/setup.log" "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "$BUNDLE"/wheels/*.whl
      step native-libs "$OUT/setup.log" "$PYTHON" -c \
        "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
        "$BUNDLE/native-libs.tar.xz" "$SITE.lib"
      step import-check "$OUT/setup.log" env LANG3D_GPU_CHECK_CPU="$CPU" "$PYTHON" scripts/gpu_import_check.py
      if [ ${#failed[@]} -gt 0 ]; then
        say "FAILED: ${failed[*]} (the other stages need the setup)"
        exit 1
      fi
      stage_done setup
      ;;
    tests)
      say "CUDA-vs-CPU tests"
      tests=(tests/test_cuda_parity.py "tests/test_point_ops.py::test_fps_and_knn_on_cuda_match_cpu")
      rm -f "$OUT/tests.log"
      if [ "$CPU" = 1 ]; then
        step tests "$OUT/tests.log" "$PYTHON" -m pytest -q -p no:cacheprovider --collect-only "${tests[@]}"
      else
        step tests "$OUT/tests.log" env OMP_NUM_THREADS=8 "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${tests[@]}"
        if grep -q "skipped" "$OUT/tests.log"; then
          echo "gpu-check: CUDA tests were skipped on a GPU machine" >&2
          failed+=(tests-skipped)
        fi
      fi
      stage_done tests
      ;;
    bench)
      say "benchmarks"
      rm -f "$LANG3D_BENCH_RECORD"
      if [ "$CPU" = 1 ]; then
        device=cpu; srunet=(--voxel-sizes 0.1 --repeats 1); point_e=(--steps 2)
        pretrain=(--color-size 324 242 --depth-size 160 120 --frames 4 --batch-size 4 --workers 2 --loader-frames 16 --steps 1)
      else
        device=cuda; srunet=(--voxel-sizes 0.02 0.025); point_e=()
        pretrain=(--frames 32 --batch-size 32 --workers "$(nproc)" --loader-frames 1024 --steps 3)
      fi
      rm -f "$OUT/bench.log"
      step srunet_speed "$OUT/bench.log" "$PYTHON" benchmarks/srunet_speed.py --device $device "${srunet[@]}"
      step point_e_sampling "$OUT/bench.log" "$PYTHON" benchmarks/point_e_sampling.py --device $device "${point_e[@]}"
      step text4point_pretrain "$OUT/bench.log" "$PYTHON" benchmarks/text4point_pretrain.py --device $device \
        "${pretrain[@]}"
      stage_done bench
      ;;
    summary)
      if [ -s "$LANG3D_BENCH_RECORD" ]; then
        step summary /dev/null "$PYTHON" benchmarks/summary.py "$LANG3D_BENCH_RECORD" "$OUT/summary.md"
      else
        echo "gpu-check: no benchmark figures recorded" >&2
        failed+=(summary)
      fi
      stage_done summary
      ;;
    *)
      echo "gpu-check: unknown stage '$stage' (setup, tests, bench, summary)" >&2
      exit 2
      ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "done in $((SECONDS - started)) s"
