#!/usr/bin/env bash
# The rehearsal on a lent CUDA machine (no internet): install the wheels carried in $WHEELS
# (default .whl/: anndata, scanpy and their missing dependencies, mamba-ssm, causal-conv1d),
# then run the plan's jobs. Usage:
#   bash benchmarks/rehearse_gpu.sh OUTDIR --plan benchmarks/results/rehearsal_plan_paper.json [run args...]
# The environment (wheels, Triton cache, PYTHONPATH): benchmarks/gpu_env.sh.
set -uo pipefail
out=${1:?usage: rehearse_gpu.sh OUTDIR --plan PLAN [run args]}; shift
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
# GPU_TESTS (pytest paths, e.g. tests/gpu/test_fused.py): run first, under TESTS_TIMEOUT seconds, with
# the same wheels: the correctness of the kernels the rehearsal times
if [ -n "${GPU_TESTS:-}" ]; then
    timeout "${TESTS_TIMEOUT:-0}" python3 -m pytest -q -rs -p no:cacheprovider $GPU_TESTS 2>&1 | tee "$out/gpu_tests.log" | tail -15
fi
# REHEARSE_TIMEOUT (seconds): stop the jobs in time to pack the Triton cache (rows are written per job)
timeout "${REHEARSE_TIMEOUT:-0}" python3 benchmarks/rehearse.py run --work /tmp/rehearse --out "$out" "$@" 2>&1 | tee "$out/rehearsal.log"
rc=${PIPESTATUS[0]}
pack_triton_cache "$out"
exit $rc
