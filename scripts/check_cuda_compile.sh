#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu to an object file with nvcc, so that a CUDA build break fails CI
# on machines without a GPU or a CUDA torch. Skipped (exit 0, one line) when nvcc is absent.
#
# Covered: the whole of each .cu file (host wrappers with their TORCH_CHECKs, the
# TORCH_LIBRARY_IMPL(..., CUDA) registration, the kernels and the shared csrc/*.h bodies they
# instantiate), preprocessed, compiled and assembled for the default arch of the toolkit, against
# the installed torch's headers. Not covered: linking (a CPU torch has no libc10_cuda to link),
# other GPU archs, and running anything.
#
# A CPU torch wheel ships torch's CUDA headers but not c10/cuda/impl/cuda_cmake_macros.h, which a
# CUDA build of torch generates with one macro; a stub with that macro stands in for it here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then NVCC=$CUDA_HOME/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found; CUDA sources not compiled"
  exit 0
fi
shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mapfile -t torch_includes < <("$PY" -c 'import torch.utils.cpp_extension as c; print("\n".join(c.include_paths()))')
# -std=c++20: the standard torch.utils.cpp_extension uses for this torch (setup.py leaves it to torch)
flags=(-std=c++20 -O3 -Xcompiler -fPIC -DWITH_CUDA)
for dir in "${torch_includes[@]}"; do flags+=(-I"$dir"); done
# the nvcc flags torch adds to every CUDA extension build (--expt-relaxed-constexpr, ...)
mapfile -t torch_nvcc_flags < <("$PY" -c 'import torch.utils.cpp_extension as c; print("\n".join(c.COMMON_NVCC_FLAGS))')
flags+=("${torch_nvcc_flags[@]}")
if [ ! -f "${torch_includes[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$work/stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$work/stub/c10/cuda/impl/cuda_cmake_macros.h"
  flags+=(-I"$work/stub")
fi
status=0
for src in "${sources[@]}"; do
  obj="$work/$(basename "${src%.cu}").o"
  if "$NVCC" "${flags[@]}" -c "$src" -o "$obj"; then
    echo "check_cuda_compile: $src -> object file OK ($("$NVCC" --version | tail -1))"
  else
    echo "check_cuda_compile: $src FAILED" >&2
    status=1
  fi
done
exit $status
