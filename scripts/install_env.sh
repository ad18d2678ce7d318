#!/usr/bin/env bash
# Creates the project's virtual environment with pinned dependencies, builds (or reuses a cached)
# MinkowskiEngine 0.5.4 wheel, and installs lang3d in editable mode.
#   VENV   where the environment goes (default .venv)
#   PYTHON the interpreter to build it from (default: python3.12 on PATH, else pyenv's 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=$(bash scripts/python312.sh) || exit 1
# MinkowskiEngine links BLAS; Debian's OpenBLAS headers are needed to build it.
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  echo "install: libopenblas-dev missing, installing it with apt-get"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q -r requirements.txt -r requirements-dev.txt
"$PY" scripts/build_minkowski.py
"$PY" -m pip install -q --no-deps --no-build-isolation -e .
bash scripts/check_lightning_command.sh "$VENV" || true   # warns when lightning-sdk owns the `lightning` script
"$PY" -c "import MinkowskiEngine as ME, open_clip, lightning; print('lang3d environment ready: MinkowskiEngine', ME.__version__, '| CUDA' if ME.is_cuda_available() else '| CPU')"
touch "$VENV/.lang3d-installed"
