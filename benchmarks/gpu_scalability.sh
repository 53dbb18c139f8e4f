#!/usr/bin/env bash
# Scalability of the multi-omics methods (issue 25 point 3) on a lent GPU: the paper's towers
# (config/paper.yaml: models.scmamba, evaluation.multiomics.train) trained one epoch and embedding
# every cell, and PCA + CCA, on simulated paired cells. Rows go to OUTDIR/scalability.csv with
# device, date and commit; append them to benchmarks/results/scalability.csv (the report figure's
# input). One device command is 10 minutes at most: pass the sizes of one command, smallest first
# (a point that does not finish in time is the next command's), e.g.
#   bash benchmarks/gpu_scalability.sh OUTDIR 10000 30000      (carry .whl: see gpu_env.sh)
#   bash benchmarks/gpu_scalability.sh OUTDIR 100000
#   METHODS="scmamba pca_cca" bash benchmarks/gpu_scalability.sh OUTDIR 300000
set -u
out=${1:?OUTDIR}; shift
source benchmarks/gpu_env.sh
python3 benchmarks/bench_scalability.py --config config/paper.yaml --sizes "${@:-10000}" \
    --methods ${METHODS:-scmamba scmamba_bimamba scmamba_transformer pca_cca} --out "$out/scalability.csv"
pack_triton_cache "$out"
