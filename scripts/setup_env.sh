#!/usr/bin/env bash
# Create ./.venv with everything ecd2g_fast needs, without ever pulling a CUDA torch onto a
# CPU-only machine:
#   * a python3 that already imports a CUDA-enabled torch is reused (venv with system packages);
#   * otherwise torch==$TORCH_VERSION is installed (on the project's CPU machines that resolves to
#     a local CPU wheel; on a GPU machine without torch it is PyPI's CUDA build, as it should be).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "setup_env: reusing the installed CUDA torch"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install -q "torch==$TORCH_VERSION"
fi
$PIP install -q "numpy>=1.24" "tqdm>=4.60" "matplotlib>=3.7" "pytest>=7" "pytest-benchmark>=4" "hypothesis>=6.100" \
  "triton>=3.0" "scikit-learn>=1.3" pybind11 ninja setuptools wheel
# --no-build-isolation: build the extension against the torch installed above
$PIP install -q --no-build-isolation --no-deps -e .
touch "$VENV/.ecd2g-installed"
