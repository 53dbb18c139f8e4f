#!/usr/bin/env bash
# One GPU check on a lent CUDA machine: install mamba-ssm + causal-conv1d wheels carried in
# $WHEELS (default .gpu/), run the kernel-vs-reference tests (tests/gpu), then the throughput
# sweep. Usage: bash benchmarks/gpu_check.sh OUTDIR [gpu_check.py args...]
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR [args]}; shift
mkdir -p "$out"
WHEELS=${WHEELS:-.gpu}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.gpu/triton-cache} TRITON_CACHE_AUTOTUNING=1 PYTHONUNBUFFERED=1
[ -f "$WHEELS/triton-cache.tar" ] && mkdir -p "$TRITON_CACHE_DIR" && tar -xf "$WHEELS/triton-cache.tar" -C "$TRITON_CACHE_DIR"
python3 -m pip install -q --no-deps "$WHEELS"/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, mamba_ssm, causal_conv1d_cuda, selective_scan_cuda; print('torch', torch.__version__, torch.cuda.get_device_name(), 'mamba_ssm', mamba_ssm.__version__)"
if [ -z "${SKIP_TESTS:-}" ]; then
    python3 -m pytest -q -rs tests/gpu 2>&1 | tee "$out/gpu_tests.log" | tail -15
fi
[ $# -gt 0 ] && python3 benchmarks/gpu_check.py "$@"
tar -cf "$out/triton-cache.tar" -C "$TRITON_CACHE_DIR" . 2>/dev/null
ls -la "$out"
