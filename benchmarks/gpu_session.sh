#!/usr/bin/env bash
# The GPU work of the benchmark issue, cut into parts that each fit one device-tool call (10 min).
# Everything a part produces (logs, report JSON/markdown/log) goes under $OUT, which the tool
# brings back; commit it under benchmarks/results/ with the command that made it.
#
#   bash benchmarks/gpu_session.sh build-test   # nvidia-smi, CUDA build, the whole test suite
#   bash benchmarks/gpu_session.sh ops          # report: target pass, one move, one training step
#   bash benchmarks/gpu_session.sh end-to-end   # report: 2D training, sampling 256 and 1,000,000
#
# Each part builds the extension first if the machine is fresh (a warm one keeps the build). The
# report parts start from benchmarks/results/cuda-*.json when present and merge into it, so copy
# the first part's $OUT/results/* into benchmarks/results/ before running the second.
# Environment: OUT (required), PYTHON (default python), REPORT_ARGS (extra report.py options).
set -euo pipefail
: "${OUT:?set OUT to the folder to write into}"
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/results"

build() {
    if ! "$PY" -c "import sys, torch, ecd2g_fast._extension as e; sys.exit(not e.has_device_kernels(torch.device('cuda')))" 2>/dev/null; then
        echo "building the extension (log: $OUT/build.log)"
        "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
    fi
    "$PY" -c "import torch, ecd2g_fast._extension as e; d = torch.device('cuda'); print('device kernels:', e.has_device_kernels(d) or e.device_unavailable_reason(d))"
}

report() {
    cp benchmarks/results/cuda-*.json "$OUT/results/" 2>/dev/null || true
    # shellcheck disable=SC2086  # REPORT_ARGS is a list of options
    "$PY" benchmarks/report.py --device cuda --out "$OUT/results" --merge --cases "$@" ${REPORT_ARGS:-}
}

case "${1:-}" in
build-test)
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $OUT/nvidia-smi.txt)"
    build
    "$PY" -m pytest -q -rs tests 2>&1 | tee "$OUT/tests.log"
    ;;
ops)
    build
    report targets move train-step
    ;;
end-to-end)
    build
    report train-2d sample-2d
    ;;
*)
    echo "usage: OUT=DIR bash benchmarks/gpu_session.sh build-test|ops|end-to-end" >&2
    exit 2
    ;;
esac
