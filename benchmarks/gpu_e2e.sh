#!/usr/bin/env bash
# End-to-end pretraining measurements of issue 23 on a lent GPU, as one command. Writes rows to
# OUTDIR/pretrain_e2e.csv, each with its code, device and date (bench_pretrain_e2e.py).
# Copy the rows into benchmarks/results/pretrain_e2e_<device>_<date>.csv afterwards.
#   bash benchmarks/gpu_e2e.sh OUTDIR [budget|d512|all]    (carry .whl: see gpu_env.sh)
# budget: scmamba2 at paper depth (24 layers) on cells of ~1,950 tokens, for paper.yaml's choice:
#   micro-batches of 2 (paper.yaml today), or passes under a token budget of 32,768 or 40,960.
#   Peak memory must stay under an 80 GB card's 74.5 GiB.
# d512: the d512 x 6 rows of 2026-12-04: scmamba2, genemamba and their Transformer peers, loop
#   and in-memory, plus the bare backbone and cellmamba.embed.
set -u
out=${1:?OUTDIR}; series=${2:-all}
source benchmarks/gpu_env.sh
B="python3 benchmarks/bench_pretrain_e2e.py --work ${WORK:-/tmp/e2e} --cells 20000 --shards 16 --out $out/pretrain_e2e.csv"
if [[ $series == budget || $series == all ]]; then
    $B --run scmamba2 --layers 24 --steps 20 --arms loop,in_memory --micro-batch 2 --tag _m2
    for budget in 32768 40960; do
        $B --run scmamba2 --layers 24 --steps 20 --arms loop,in_memory --max-tokens-per-pass $budget --tag _b$budget
    done
fi
if [[ $series == d512 || $series == all ]]; then
    $B --run scmamba2 --run genemamba --steps 150 --arms loop,in_memory,bare_full
    $B --run scmamba2:transformer --run genemamba:transformer --steps 100 --arms loop,in_memory
    $B --run scmamba2 --arms embed
fi
pack_triton_cache "$out"
