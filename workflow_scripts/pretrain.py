"""Rule pretrain: one model on its recipe's token corpus; torchrun when the job has several GPUs."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(snakemake.scriptdir).parent / "src")
sys.path.insert(0, SRC)  # cellmamba of this checkout; torchrun's workers get it through PYTHONPATH

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.train.pretrain import PretrainConfig, loader_workers, run_pretraining

os.environ.setdefault("TRITON_CACHE_DIR", str(Path(snakemake.params.triton_cache).resolve()))
out_dir = Path(snakemake.output.model).parent
n_gpus = int(snakemake.resources.get("gpu", 0) or 0)
# the job's cores (the profile's cpus_per_task, else the rule's threads) collate in loader workers
cpus = snakemake.resources.get("cpus_per_task") or snakemake.threads
config = dataclasses.replace(PretrainConfig.from_workflow(**snakemake.params.settings),
                             num_workers=loader_workers(cpus, max(n_gpus, 1)))
gene_stats = snakemake.input.get("gene_stats")
gene_sets = list(snakemake.input.get("gene_sets", []))
if n_gpus > 1:  # one process per GPU, data parallel
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}",
           "-m", "cellmamba", "pretrain", "--corpus", snakemake.input.corpus, "--out", str(out_dir),
           "--config", json.dumps(dataclasses.asdict(config)), "--log", snakemake.log[0] + ".ranks"]
    if gene_stats:
        cmd += ["--gene-stats", gene_stats]
    if gene_sets:
        cmd += ["--gene-sets", *gene_sets]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    subprocess.run(cmd, check=True, env=env)
else:
    run_pretraining(snakemake.input.corpus, out_dir, config=config, gene_stats=gene_stats, gene_sets=gene_sets)
