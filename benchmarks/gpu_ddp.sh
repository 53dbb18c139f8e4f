#!/usr/bin/env bash
# DDP on one node: the same scmamba2 run (d512 x 6, L=2048, 32 cells per GPU) on 1 GPU and on
# all GPUs through torchrun; prints each run's median tokens/s and the scaling efficiency.
# Usage: bash benchmarks/gpu_ddp.sh WORK OUTDIR GENE_STATS [STEPS]
set -euo pipefail
work=$1; out=$2; stats=$3; steps=${4:-200}
n=$(python3 -c "import torch; print(torch.cuda.device_count())")
python3 benchmarks/gpu_pretrain.py --work "$work" --cells 100000 --shards 10 --gene-stats "$stats"
cfg="{\"recipe\": \"scmamba2\", \"d_model\": 512, \"n_layers\": 6, \"context_length\": 2048, \"batch_size\": 32, \"max_steps\": $steps, \"warmup_steps\": 20, \"checkpoint_every\": $steps, \"log_every\": 10, \"pathway_weight\": 0.0, \"backend\": \"cuda\"}"
python3 -m cellmamba pretrain --corpus "$work/tokens/binned/manifest.json" --out "$work/ddp_1gpu" --config "$cfg" 2>&1 | grep -v "it/s\]" | tail -2
python3 -m torch.distributed.run --standalone --nproc_per_node "$n" -m cellmamba pretrain \
    --corpus "$work/tokens/binned/manifest.json" --out "$work/ddp_${n}gpu" --config "$cfg" 2>&1 | grep -v "it/s\]" | tail -2
python3 - "$work" "$out" "$n" <<'PY'
import sys, datetime, pandas as pd, torch
work, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = []
for g in (1, n):
    m = pd.read_csv(f"{work}/ddp_{g}gpu/metrics.csv"); s = m[m.step > 40]
    rows.append(dict(gpus=g, steps=int(m.step.max()), global_batch=32 * g, median_tokens_per_s=round(s.tokens_per_s.median()),
                     first_loss=m.loss.iloc[0], last_loss=m.loss.iloc[-1], device=torch.cuda.get_device_name(),
                     date=datetime.date.today().isoformat()))
df = pd.DataFrame(rows)
df["scaling_efficiency"] = df.median_tokens_per_s / (df.gpus * df.median_tokens_per_s.iloc[0])
df.to_csv(f"{out}/pretrain_ddp_scmamba2_2048.csv", index=False)
print(df.to_string(index=False))
PY
