#!/usr/bin/env bash
# The GPU throughput report, cut into parts that each take under 10 minutes.
# Each part writes its logs and a copy of the report files (JSON, markdown, log) under $OUT;
# commit the report files under benchmarks/results/ with the command they record.
#
#   bash benchmarks/gpu_session.sh build-test   # nvidia-smi, CUDA build, the whole test suite
#   bash benchmarks/gpu_session.sh ops          # report: target pass, one move, one training step
#   bash benchmarks/gpu_session.sh end-to-end   # report: 2D training, sampling 256 and 1,000,000
#   bash benchmarks/gpu_session.sh highdim      # the D = 64 experiments at the recipe's full budget
#                                               # (the mixture also with the inflow sink), and the
#                                               # MLP-mixer body (HammingMixer)
#
# Each part builds the extension first if the machine is fresh (a warm one keeps the build). The
# report parts write into benchmarks/results/ and merge with the cuda-*.json already there (the
# report records its command relative to the repository root), so on a fresh machine copy the
# first part's $OUT/results/* into benchmarks/results/ before running the second.
# Environment: OUT (required), PYTHON (default python), REPORT_ARGS (extra report options),
# DEVICE (default cuda), HIGHDIM_ARGS (extra `ecd2g run` options, e.g. a short dry run on the CPU:
# DEVICE=cpu HIGHDIM_ARGS="--steps 5 --num-samples 4 --max-moves 20").
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
    # shellcheck disable=SC2086  # REPORT_ARGS is a list of options
    "$PY" -m benchmarks.report --device cuda --merge --cases "$@" ${REPORT_ARGS:-}
    cp benchmarks/results/cuda-*.json benchmarks/results/cuda-*.md benchmarks/results/cuda-*.log "$OUT/results/"
}

case "${1:-}" in
build-test)
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $OUT/nvidia-smi.txt)"
    build
    "$PY" -m pytest -q -rs tests 2>&1 | tee "$OUT/tests.log"
    ;;
ops)
    build
    report targets hamming-targets move hamming-move train-step
    ;;
end-to-end)
    build
    report train-2d sample-2d
    ;;
highdim)
    [ "${DEVICE:-cuda}" = cpu ] || build
    mkdir -p "$OUT/highdim"
    # name, then the options of `ecd2g run`; each run's metrics.json, config.json and log come back
    while read -r name options; do
        echo "== $name: ecd2g run $options"
        # shellcheck disable=SC2086  # options and HIGHDIM_ARGS are lists of options
        if "$PY" -m ecd2g_fast.cli run $options --device "${DEVICE:-cuda}" --out "$OUT/highdim/$name" --quiet \
            ${HIGHDIM_ARGS:-} >"$OUT/highdim/$name.log" 2>&1; then
            tail -n 3 "$OUT/highdim/$name.log"
        else
            echo "$name failed (see $OUT/highdim/$name.log)"
        fi
        rm -f "$OUT/highdim/$name"/*.pt  # checkpoints stay on the machine
    done <<'RUNS'
mixture-10k bernoulli-mixture-64 --steps 10000
mixture-10k-inflow bernoulli-mixture-64 --steps 10000 --model-kwargs {"layer_encoding":"smooth","width":256,"depth":3}
binary-digits-10k binary-digits-64 --steps 10000
mixer-mixture-3k bernoulli-mixture-64 --model hamming-mixer
RUNS
    ;;
*)
    echo "usage: OUT=DIR bash benchmarks/gpu_session.sh build-test|ops|end-to-end|highdim" >&2
    exit 2
    ;;
esac
