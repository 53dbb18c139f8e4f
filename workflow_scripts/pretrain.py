"""Rule pretrain: one model on its recipe's token corpus. In this process on one GPU (or the CPU);
torchrun with one process per GPU when the job has several (`gpu: N`); srun + torchrun, one agent
per node, when the job spans several nodes (`nodes: N`, README "Several nodes")."""
import contextlib
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

SRC = str(Path(snakemake.scriptdir).parent / "src")
sys.path.insert(0, SRC)  # cellmamba of this checkout; torchrun's workers get it through PYTHONPATH

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.errors import InputError
from cellmamba.train.pretrain import PretrainConfig, loader_workers, run_pretraining

res = snakemake.resources


def gres_gpus() -> int:
    """GPUs per node of a `gres` resource: "gpu:4", "gpu:h100:4" -> 4, "gpu" -> 1, none -> 0."""
    parts = str(res.get("gres") or "").split(":")
    return 0 if parts[0] != "gpu" else int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1


def scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True).stdout


def slurm_hosts(nodes: int) -> tuple[str, list[str]]:
    """(job id, hosts) of this Slurm job, whose node count must be the rule's `nodes`."""
    hint = ("give pretrain `nodes: N`, `mpi: srun` and `tasks: N` in set-resources and run it with "
            "--executor slurm (README \"Several nodes\")")
    if res.get("gpu"):
        raise InputError(f"resource nodes={nodes} with gpu={res.get('gpu')}: `gpu` is a per-job total that Slurm "
                         "may split unevenly over the nodes; ask for GPUs per node with gres: \"gpu:<n>\"")
    if not res.get("mpi") or res.get("tasks") != nodes:
        raise InputError(f"resource nodes={nodes} needs mpi: srun and tasks: {nodes} (one torchrun per node; got "
                         f"mpi={res.get('mpi')!r}, tasks={res.get('tasks')!r}): without `mpi` the Slurm executor "
                         "runs this script in a one-node `srun -n1` step, not in the whole allocation; " + hint)
    if gres_gpus() and res.get("tasks_per_gpu") != 0:
        raise InputError(f"resource nodes={nodes} with gres={res.get('gres')!r} needs tasks_per_gpu: 0, or the "
                         f"Slurm executor submits --ntasks-per-gpu={nodes}")
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise InputError(f"resource nodes={nodes} but this job runs outside a Slurm allocation (no SLURM_JOB_ID); "
                         + hint)
    counts = {k: os.environ[k] for k in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES") if k in os.environ}
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not counts or not nodelist:  # the Slurm jobstep executor hands the rule only SLURM_JOB_ID
        job = scontrol("-o", "show", "job", job_id)
        counts = counts or dict(re.findall(r"(?<!\S)(NumNodes)=(\d+)", job))
        nodelist = nodelist or re.search(r"(?<!\S)NodeList=(\S+)", job).group(1)
    hosts = scontrol("show", "hostnames", nodelist).split()
    for key, value in {**counts, "NodeList": len(hosts)}.items():
        if int(value) != nodes:
            raise InputError(f"resource nodes={nodes} but Slurm job {job_id} has {key}={value} "
                             f"({'a one-node job step' if key == 'SLURM_NNODES' else 'another node count'}); "
                             + hint)
    return job_id, hosts


os.environ.setdefault("TRITON_CACHE_DIR", str(Path(snakemake.params.triton_cache).resolve()))
out_dir = Path(snakemake.output.model).parent
nodes = int(res.get("nodes", 1) or 1)
n_gpus = int(res.get("gpu", 0) or 0) or gres_gpus()  # per node
# the job's cores (the profile's cpus_per_task, else the rule's threads; per node) collate in loader workers
cpus = res.get("cpus_per_task") or snakemake.threads
config = dataclasses.replace(PretrainConfig.from_workflow(**snakemake.params.settings),
                             num_workers=loader_workers(cpus, max(n_gpus, 1)))
gene_stats = snakemake.input.get("gene_stats")
gene_sets = list(snakemake.input.get("gene_sets", []))
# one process per GPU (one per node on CPU), data parallel
pretrain_cmd = ["-m", "cellmamba", "pretrain", "--corpus", snakemake.input.corpus, "--out", str(out_dir),
                "--config", json.dumps(dataclasses.asdict(config))]
pretrain_cmd += ["--gene-stats", gene_stats] if gene_stats else []
pretrain_cmd += ["--gene-sets", *gene_sets] if gene_sets else []
torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={max(n_gpus, 1)}"]
# the ranks' output: torchrun's argparse takes a worker's `--log` for an (ambiguous) abbreviation of
# its own --log-dir / --logs-specs, so their stdout and stderr go to files instead: <log>.ranks (one
# node; the workers share torchrun's file descriptors, so lines never overwrite each other) or srun's
# <log>.node<i> (one file per node, written on that node)
if nodes > 1:
    job_id, hosts = slurm_hosts(nodes)
    ranks_log = f"{snakemake.log[0]}.node%n"
    # one task per node, each with its node's cores, memory and GPUs
    cmd = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}", "--mem=0",
           "--kill-on-bad-exit=1", f"--output={ranks_log}", *torchrun, f"--nnodes={nodes}",
           "--rdzv_backend=c10d", f"--rdzv_endpoint={hosts[0]}:{29400 + int(job_id) % 20000}",
           f"--rdzv_id={job_id}", *pretrain_cmd]
elif n_gpus > 1:
    ranks_log = f"{snakemake.log[0]}.ranks"
    cmd = [*torchrun, "--standalone", *pretrain_cmd]
if nodes > 1 or n_gpus > 1:
    log.info("pretrain: %s (the ranks' output: %s)", shlex.join(cmd), ranks_log)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    # srun writes its per-node files itself (and its own messages to the job's output)
    with open(ranks_log, "w") if nodes == 1 else contextlib.nullcontext() as out:
        subprocess.run(cmd, check=True, env=env, stdout=out, stderr=None if out is None else subprocess.STDOUT)
else:
    run_pretraining(snakemake.input.corpus, out_dir, config=config, gene_stats=gene_stats, gene_sets=gene_sets)
